"""ImageNet and its shifts: label order, the A/R 200-class subsets, converters, restricted scoring."""
import json
import tarfile
import re

import pytest
import torch
from torch import nn
from torchvision.transforms import functional as TF

from clipood_zoo import protocol_eval
from clipood_zoo.data.catalog import IMAGENET, prettify_class_name
from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.protocols import imagenet as P
from clipood_zoo.data.synthetic import image_bytes
from clipood_zoo.errors import DatasetError


def test_wnids_and_subsets():
    wnids = P.imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"  # tench ... toilet tissue
    a, r = P.subset_indices("imagenet_a"), P.subset_indices("imagenet_r")
    assert len(a) == len(r) == 200
    # The first entries of indices_in_1k (hendrycks/natural-adv-examples) and of the ImageNet-R mask.
    assert a[:10] == (6, 11, 13, 15, 17, 22, 23, 27, 30, 37)
    assert r[:10] == (1, 2, 4, 6, 8, 9, 11, 13, 22, 23)
    assert P.subset_wnids("imagenet_r")[:3] == ("n01443537", "n01484850", "n01494475")
    # The label order is the one of CLIP's names the ImageNet model uses.
    assert IMAGENET.class_folders[0] == "tench" and IMAGENET.class_folders[6] == "stingray"


def test_shard_class_names_unique_but_prompt_equal():
    names = P.shard_classes()
    assert len(set(names)) == 1000
    assert names[744] == "missile_" and names[837] == "sunglasses_"
    assert [prettify_class_name(n) for n in names] == [prettify_class_name(n) for n in IMAGENET.class_folders]


def _members(out_dir):
    info = read_dataset_info(out_dir)
    found = []
    for name in info.split("test").filenames:
        with tarfile.open(out_dir / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for f, data in files.items():
            if f.endswith(".json"):
                found.append((json.loads(data)["path"], int(files[f[:-5] + ".cls"])))
    return info, sorted(found)


def test_imagenet_a_tree_converts_with_eval_classes(tmp_path):
    root = tmp_path / "imagenet-adversarial" / "imagenet-a"
    wnids = P.subset_wnids("imagenet_a")
    for k, w in enumerate(wnids):
        (root / w).mkdir(parents=True)
        for i in range(1 + (k % 2)):
            (root / w / f"0.{i}_{w}.jpg").write_bytes(image_bytes((k, i, 0), "jpg"))
    (root / "README.txt").write_text("ImageNet-A")
    P.convert_shift("imagenet_a", tmp_path / "imagenet-adversarial", tmp_path / "out", shard_size=128)
    info, members = _members(tmp_path / "out")
    assert info.domains == ("imagenet_a",) and len(info.classes) == 1000
    assert len(members) == 300
    all_wnids = P.imagenet_wnids()
    assert all(all_wnids[label] == path.split("/")[0] for path, label in members)  # independent of the converter
    assert read_dataset_info(tmp_path / "out").eval_classes == P.subset_indices("imagenet_a")
    assert json.loads((tmp_path / "out" / "_info.json").read_text())["class_ids"] == list(all_wnids)


def test_missing_wnid_folder_is_named(tmp_path):
    root = tmp_path / "imagenet-r"
    for w in P.subset_wnids("imagenet_r")[1:]:
        (root / w).mkdir(parents=True)
    (root / "n99999999").mkdir()
    with pytest.raises(DatasetError, match=r"missing 1 class folder\(s\): 'n01443537'.*unexpected.*'n99999999'"):
        P.convert_shift("imagenet_r", tmp_path, tmp_path / "out")


def test_imagenet_v2_folders_are_class_indices(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for c in range(1000):
        (root / str(c)).mkdir(parents=True)
        if c in (0, 2, 10, 999):  # a few images; every folder must exist
            (root / str(c) / f"{c}abc.jpeg").write_bytes(image_bytes((1, 2, 3), "jpg"))
        else:
            (root / str(c) / "x.jpeg").write_bytes(image_bytes((1, 2, 3), "png"))
    P.convert_shift("imagenet_v2", tmp_path, tmp_path / "out", shard_size=1000)
    info, members = _members(tmp_path / "out")
    assert len(members) == 1000 and read_dataset_info(tmp_path / "out").eval_classes is None
    assert all(int(path.split("/")[0]) == label for path, label in members)  # folder '10' -> 10, not sorted '10' < '2'


@pytest.mark.parametrize("fmt", ["caffe", "wnid", "kaggle"])
def test_flat_val_with_label_file(tmp_path, fmt):
    val = tmp_path / "val"
    val.mkdir()
    wnids = P.imagenet_wnids()
    labels = {f"ILSVRC2012_val_{i:08d}.JPEG": c for i, c in enumerate((65, 970, 230, 0, 999), start=1)}
    for name in labels:
        (val / name).write_bytes(image_bytes((3, 3, 3), "jpg"))
    if fmt == "kaggle":
        text = "ImageId,PredictionString\n" + "".join(
            f"{n[:-5]},{wnids[c]} 1 2 3 4 {wnids[c]} 5 6 7 8\n" for n, c in labels.items())
    else:
        text = "".join(f"{n} {c if fmt == 'caffe' else wnids[c]}\n" for n, c in labels.items())
    (tmp_path / "labels.txt").write_text(text)
    P.convert_shift("imagenet", val, tmp_path / "out", label_file=tmp_path / "labels.txt")
    _, members = _members(tmp_path / "out")
    assert dict(members) == labels


def test_devkit_ground_truth_is_refused(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(image_bytes((3, 3, 3), "jpg"))
    (tmp_path / "gt.txt").write_text("490\n361\n")
    with pytest.raises(DatasetError, match="devkit"):
        P.convert_shift("imagenet", tmp_path / "val", tmp_path / "out", label_file=tmp_path / "gt.txt")


def test_restricted_top1_by_hand():
    logits = torch.full((3, 1000), -1.0)
    subset = [6, 11, 13]
    logits[0, 500], logits[0, 11] = 9.0, 1.0  # 1000-way: 500 (wrong); restricted: 11 (right)
    logits[1, 13], logits[1, 6] = 2.0, 3.0  # restricted: 6 (wrong, target 13)
    logits[2, 6] = 0.5  # restricted: 6 (right)
    target = torch.tensor([11, 13, 6])
    assert P.restricted_top1(logits, target, subset) == pytest.approx(200 / 3)
    assert (logits.argmax(1) == target).float().mean().item() == pytest.approx(1 / 3)


class _LookupModel(nn.Module):
    """Image i (red channel = i/255) -> the i-th row of a fixed logits table."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[torch.round(x[:, 0, 0, 0] * 255).long()]


def test_evaluate_shift_restricts_logits(tmp_path):
    root = tmp_path / "imagenet-r"
    wnids = P.subset_wnids("imagenet_r")
    for k, w in enumerate(wnids[:6]):
        (root / w).mkdir(parents=True)
    for w in wnids[6:]:
        (root / w).mkdir(parents=True)
    # 12 images, two per class for the first six classes (red value = image number)
    samples = []
    for i in range(12):
        w = wnids[i // 2]
        (root / w / f"{i:02d}.png").write_bytes(image_bytes((i, 0, 0), "png"))
        samples.append((i, P.imagenet_wnids().index(w)))
    for w in wnids[6:]:  # every class folder must hold an image: give the others one each, numbered 12+
        i = len(samples)
        (root / w / f"{i:03d}.png").write_bytes(image_bytes((i, 0, 0), "png"))
        samples.append((i, P.imagenet_wnids().index(w)))
    P.convert_shift("imagenet_r", tmp_path, tmp_path / "out")
    g = torch.Generator().manual_seed(0)
    table = torch.randn(len(samples), 1000, generator=g)
    subset = list(P.subset_indices("imagenet_r"))
    for i, target in samples[::3]:
        table[i, 0] = 100.0  # class 0 (tench) is not in ImageNet-R: wins only without the restriction
        table[i, target] = 50.0
    expected = sum(subset[int(table[i, subset].argmax())] == t for i, t in samples) / len(samples) * 100
    unrestricted = sum(int(table[i].argmax()) == t for i, t in samples) / len(samples) * 100
    assert expected != unrestricted
    m = protocol_eval.evaluate_shift(_LookupModel(table), tmp_path / "out", batch_size=7, workers=0, transform=TF.to_tensor)
    assert m["top1"] == pytest.approx(expected, abs=1e-3) and m["top1_imagenet_r"] == pytest.approx(expected, abs=1e-3)
    assert m["eval_classes"] == 200 and m["num_samples"] == len(samples)


@pytest.fixture
def imagenet_r_shards(tmp_path):
    root = tmp_path / "imagenet-r"
    for i, w in enumerate(P.subset_wnids("imagenet_r")):
        (root / w).mkdir(parents=True)
        (root / w / "0.png").write_bytes(image_bytes((i % 256, 0, 0), "png"))
    P.convert_shift("imagenet_r", tmp_path, tmp_path / "out")
    return tmp_path / "out"


def test_validate_imagenet_cli_takes_the_common_flags_and_shows_progress(imagenet_r_shards, tmp_path, capsys):
    from clipood_zoo.data.protocols.__main__ import main
    from tests.conftest import TINY_ARCH, TINY_CONFIG

    argv = ["validate-imagenet", "--model", TINY_ARCH, "--model-config", TINY_CONFIG, "--data-dir",
            str(imagenet_r_shards), "-b", "64", "-j", "0", "--amp", "--results-file", str(tmp_path / "r.json")]
    assert main(argv + ["--split", "test"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"imagenet_r: +0%\|.*\| 0/4 ", err)  # tqdm's bar over the 200 images in batches of 64
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["split"] == "test" and row["eval_classes"] == 200 and row["num_samples"] == 200
    with pytest.raises(SystemExit) as e:
        main(argv + ["--split", "val"])
    assert e.value.code == 2 and "has no split 'val'" in capsys.readouterr().err
