"""validate.py --predictions-file and the paired intervals tools/emojidg/report.py prints from them."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import validate
from clipood_zoo.data.synthetic import write_synthetic_dataset
from clipood_zoo.errors import ConfigError
from clipood_zoo.stats import paired_class_bootstrap
from tests.conftest import TINY_CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from emojidg import report  # noqa: E402


@pytest.mark.parametrize("classes", ["all", "base"])
def test_predictions_file_agrees_with_the_scores_of_the_same_run(tmp_path, classes):
    data = tmp_path / "data"
    info = write_synthetic_dataset(data, per_class=2, splits=("val",))
    (row,) = validate.main(["--model", "clipood-test-tiny", "--model-config", TINY_CONFIG, "--data-dir", str(data),
                            "--workers", "0", "--classes", classes, "--predictions-file", str(tmp_path / "p.json")])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["split"] == "val" and list(saved["models"]) == ["clipood-test-tiny"]
    p = {k: np.asarray(v) for k, v in saved["models"]["clipood-test-tiny"].items()}
    assert len(p["target"]) == row["num_samples"] == (24 if classes == "all" else 12)
    assert set(p["target"]) <= set(info.class_subset(classes)) and set(p["prediction"]) <= set(info.class_subset(classes))
    assert 100 * np.mean(p["target"] == p["prediction"]) == pytest.approx(row["top1"])
    for d, name in enumerate(info.domains):
        mine = p["domain"] == d
        assert 100 * np.mean(p["target"][mine] == p["prediction"][mine]) == pytest.approx(row[f"top1_{name}"])


def _write(results: Path, stem: str, target, prediction):
    results.mkdir(exist_ok=True)
    body = {"split": "val", "models": {stem: {"target": list(map(int, target)), "domain": [0] * len(target),
                                              "prediction": list(map(int, prediction))}}}
    (results / f"{stem}{report.PREDICTIONS_SUFFIX}").write_text(json.dumps(body))


def test_report_pairs_every_comparison_on_seed_averaged_correctness(tmp_path):
    rng = np.random.default_rng(0)
    target = np.repeat(np.arange(20), 3)  # 20 classes, 3 images each, the same in every domain file
    wrong = lambda p: np.where(rng.random(len(target)) < p, (target + 1) % 20, target)  # noqa: E731
    runs = {}
    for domain in ("3d", "flat", "mono", "line"):
        for stem, pred in ((f"zeroshot-{domain}", wrong(0.8)), (f"erm-{domain}-s0", wrong(0.5)),
                           (f"clipood-{domain}-s0", wrong(0.4)), (f"clipood-{domain}-s1", wrong(0.3))):
            _write(tmp_path, stem, target, pred)
            runs[stem] = pred == target
    paired = report.paired_differences(report.load_correctness(tmp_path))
    assert list(paired) == ["clipood - erm", "clipood - zeroshot", "erm - zeroshot"]
    clipood = {d: (runs[f"clipood-{d}-s0"] + runs[f"clipood-{d}-s1"].astype(float)) / 2 for d in ("3d", "mono")}
    assert paired["clipood - erm"]["3d"] == paired_class_bootstrap(clipood["3d"], runs["erm-3d-s0"], target)
    assert paired["clipood - zeroshot"]["mono"] == paired_class_bootstrap(clipood["mono"], runs["zeroshot-mono"], target)
    pooled = paired["erm - zeroshot"]["avg"]
    domains = ("3d", "flat", "mono", "line")
    assert pooled.diff == pytest.approx(np.mean([100 * (runs[f"erm-{d}-s0"].mean() - runs[f"zeroshot-{d}"].mean())
                                                 for d in domains]))
    assert pooled.num_classes == 20 and pooled.num_images == 240
    text = report.paired_markdown(paired)
    for name, cells in paired.items():
        a, b = name.split(" - ")
        line = next(li for li in text.splitlines() if li.startswith(f"| {report.LABELS[a]} - {report.LABELS[b]} |"))
        assert all(str(cells[d]) in line for d in (*domains, "avg"))
        assert line.count("*") == sum(c.resolved for c in cells.values())


def test_report_refuses_to_pair_different_images(tmp_path):
    target = np.arange(10)
    _write(tmp_path, "erm-3d-s0", target, target)
    _write(tmp_path, "clipood-3d-s0", target, target)
    _write(tmp_path, "clipood-3d-s1", target[::-1], target[::-1])
    with pytest.raises(ConfigError, match=r"clipood-3d-s1.predictions.json scored other images .* --workers"):
        report.load_correctness(tmp_path)
    (tmp_path / "clipood-3d-s1.predictions.json").unlink()
    _write(tmp_path, "erm-3d-s0", target[::-1], target[::-1])
    with pytest.raises(ConfigError, match="clipood and erm were scored on different images of 3d"):
        report.paired_differences(report.load_correctness(tmp_path))
