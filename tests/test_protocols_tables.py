"""tools/paper_tables.py on hand-written result rows."""
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import paper_tables as T  # noqa: E402

from clipood_zoo.data.catalog import DOMAINBED  # noqa: E402
from clipood_zoo.errors import ConfigError  # noqa: E402


def _domainbed_rows():
    """One validate.py row per held-out domain: accuracy 60 + 2 * (domain index) + dataset index."""
    rows = []
    for k, (name, spec) in enumerate(DOMAINBED.items()):
        for i, d in enumerate(spec.domains):
            rows.append({"model": f"clipood_vitb16_{name}_{d.slug}", "top1": 1.0,
                         f"top1_{d.folder}": 60.0 + 2 * i + k})
    return rows


def _expected_dataset(k, n_domains):
    return sum(60.0 + 2 * i + k for i in range(n_domains)) / n_domains


def test_table1_from_validate_rows_and_zero_shot(tmp_path):
    zs = {"model": "ViT-B-16", "top1": 50.0, "top1_art_painting": 90.0, "top1_cartoon": 80.0, "top1_photo": 99.0,
          "top1_sketch": 71.0}
    header, rows, detail = T.table1({"ours": _domainbed_rows(), "zero-shot": [zs]})
    assert header == ["Method", "PACS", "VLCS", "OfficeHome", "TerraInc", "DomainNet", "Avg"]
    per_ds = [_expected_dataset(k, len(s.domains)) for k, s in enumerate(DOMAINBED.values())]
    assert rows[0] == ["ours"] + [f"{v:.1f}" for v in per_ds] + [f"{sum(per_ds) / 5:.1f}"]
    assert rows[1] == ["zero-shot", "85.0", "", "", "", "", ""]  # other datasets missing: Avg blank
    assert rows[2] == ["CLIPood (paper)", "", "", "", "", "", "78.6"]
    assert ["ERM (paper)", "", "", "", "", "", "76.7"] in rows and ["zero-shot CLIP (paper)"] + [""] * 5 + ["70.2"] in rows
    assert ["OfficeHome", "Real World", "68.0", ""] in detail


def test_table1_averages_seeds_and_hand_rows():
    rows = [{"dataset": "pacs", "heldout": "sketch", "top1": 80.0}, {"dataset": "pacs", "heldout": "sketch", "top1": 82.0}]
    _, out, detail = T.table1({"ours": rows})
    assert out[0][1] == ""  # three PACS domains missing
    assert detail == [["PACS", "sketch", "81.0 (n=2)"]]


def test_table2_requires_restricted_a_and_r():
    rows = [{"model": "m", "top1": 72.0, "top1_imagenet": 72.0},
            {"model": "m", "top1": 64.0, "top1_imagenet_v2": 64.0},
            {"model": "m", "top1": 49.0, "top1_imagenet_sketch": 49.0},
            {"model": "m", "top1": 50.0, "top1_imagenet_a": 50.0, "eval_classes": 200},
            {"model": "m", "top1": 77.0, "top1_imagenet_r": 77.0, "eval_classes": 200.0}]
    header, out = T.table2({"ours": rows})
    assert header == ["Method", "ImageNet", "-V2", "-Sketch", "-A", "-R", "OOD avg"]
    assert out[0] == ["ours", "72.0", "64.0", "49.0", "50.0", "77.0", "60.0"]
    assert out[1] == ["CLIPood (paper)", "71.6", "", "", "", "", "60.4"]
    rows[3]["eval_classes"] = 1000
    with pytest.raises(ConfigError, match="200 classes"):
        T.table2({"ours": rows})


def test_table3_base_new_hm(tmp_path):
    rows = []
    for k, d in enumerate(T.B2N_ORDER):
        rows.append({"model": f"clipood_vitb16_b2n_{d}", "top1": 0.0, "base_top1": 80.0 + k, "new_top1": 70.0,
                     "hm": 0.0, f"top1_{d}": 1.0})
    rows.append({"dataset": "eurosat", "base_top1": 80.0 + 9 + 2, "new_top1": 74.0})  # a second seed for EuroSAT
    header, out = T.table3({"ours": rows})
    assert header[:4] == ["Dataset", "ours Base", "ours New", "ours H"] and header[4:] == [
        "CLIPood (paper) Base", "CLIPood (paper) New", "CLIPood (paper) H"]
    eurosat = next(r for r in out if r[0] == "EuroSAT")
    assert eurosat[1:4] == ["90.0", "72.0", f"{2 * 90 * 72 / 162:.1f}"]
    bases = [80.0 + k for k in range(11)]
    bases[9] = 90.0
    news = [70.0] * 11
    news[9] = 72.0
    b, n = sum(bases) / 11, sum(news) / 11
    assert out[0] == ["Average", f"{b:.1f}", f"{n:.1f}", f"{2 * b * n / (b + n):.1f}", "83.9", "74.5", "78.9"]
    assert out[1][4:] == ["", "", ""]  # paper per-dataset cells left blank


def test_cli_reads_csv_and_json(tmp_path, capsys):
    db = tmp_path / "db.csv"
    rows = _domainbed_rows()
    fields = sorted({k for r in rows for k in r})
    with db.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    js = tmp_path / "in.json"
    js.write_text(json.dumps([{"model": "m", "top1": 72.0, "top1_imagenet": 72.0}]))
    text = T.main([f"clipood={db}", str(js), "--output", str(tmp_path / "tables.md")])
    assert "| clipood |" in text and "| ours | 72.0 |" in text
    assert (tmp_path / "tables.md").read_text() == text
