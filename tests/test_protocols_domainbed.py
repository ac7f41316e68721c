"""DomainBed protocol: trees in the distributed layouts -> checked against the catalog -> shards."""
import json

import pytest

from clipood_zoo.data.catalog import OFFICEHOME, PACS, TERRAINCOGNITA
from clipood_zoo.data.info import read_dataset_info
from clipood_zoo.data.protocols import domainbed
from clipood_zoo.data.synthetic import image_bytes
from clipood_zoo.errors import DatasetError


def _tree(root, spec, per_class=1, skip=()):
    """root/<domain folder>/<class folder>/<n>.jpg for every domain and class of ``spec``."""
    for d, dom in enumerate(spec.domains):
        for c, cls in enumerate(spec.class_folders):
            if (dom.folder, cls) in skip:
                continue
            folder = root / dom.folder / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{cls}_{i}.jpg").write_bytes(image_bytes((c, d * 60, i), "jpg"))
    return root


def _counts(out_dir, split):
    info = read_dataset_info(out_dir)
    return {d: sum(row) for d, row in zip(info.domains, info.split(split).domain_class_counts)}


def test_officehome_real_world_with_a_space_converts(tmp_path):
    src = _tree(tmp_path / "OfficeHomeDataset_10072016", OFFICEHOME)
    (src / "ImageInfo.csv").write_text("x")  # files beside the domains, as in the zip
    domainbed.convert("officehome", tmp_path, tmp_path / "out", seed=0)  # finds the raw root inside
    info = read_dataset_info(tmp_path / "out")
    assert info.name == "officehome"
    assert info.domains == ("Art", "Clipart", "Product", "Real World")
    assert info.classes == OFFICEHOME.class_folders
    n_val = int(65 * 0.2)
    assert _counts(tmp_path / "out", "val") == {d: n_val for d in info.domains}
    assert _counts(tmp_path / "out", "train") == {d: 65 - n_val for d in info.domains}
    raw = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert raw["protocol"] == "domainbed" and raw["split_seed"] == 0


def test_misspelt_domain_is_named_with_the_fix(tmp_path):
    src = _tree(tmp_path / "office_home", OFFICEHOME)
    (src / "Real World").rename(src / "Real_World")
    with pytest.raises(DatasetError, match=r"missing 1 domain folder\(s\): 'Real World'.*Rename 'Real_World' to 'Real World'"):
        domainbed.check_tree("officehome", src)


def test_missing_and_extra_classes_are_named(tmp_path):
    src = _tree(tmp_path / "PACS", PACS, skip={("sketch", "giraffe")})
    (src / "photo" / "zebra").mkdir()
    with pytest.raises(DatasetError) as e:
        domainbed.check_tree("pacs", src)
    assert "sketch: missing 1 class folder(s): 'giraffe'" in str(e.value)
    assert "unexpected class folder(s): 'zebra'" in str(e.value)


def test_extra_top_level_folder_and_empty_class(tmp_path):
    src = _tree(tmp_path / "PACS", PACS)
    (src / "kfold_old").mkdir()
    with pytest.raises(DatasetError, match="unexpected domain folder"):
        domainbed.check_tree("pacs", src)
    (src / "kfold_old").rmdir()
    for f in (src / "cartoon" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"without images: \['dog'\]"):
        domainbed.check_tree("pacs", src)


def test_pacs_split_counts_per_domain_class(tmp_path):
    _tree(tmp_path / "kfold", PACS, per_class=5)
    check = domainbed.check_tree("pacs", tmp_path)
    assert check.root.name == "kfold" and check.num_images == 4 * 7 * 5
    domainbed.convert("pacs", tmp_path, tmp_path / "out", seed=3)
    info = read_dataset_info(tmp_path / "out")
    total = {d: 35 for d in info.domains}
    val, train = _counts(tmp_path / "out", "val"), _counts(tmp_path / "out", "train")
    assert val == {d: int(n * 0.2) for d, n in total.items()}
    assert {d: val[d] + train[d] for d in total} == total


def test_terraincognita_organize_then_convert(tmp_path):
    images = tmp_path / "eccv_18_all_images_sm"
    images.mkdir()
    cats = [{"id": i, "name": n} for i, n in enumerate(TERRAINCOGNITA.class_folders + ("deer",))]
    data = {"categories": cats, "images": [], "annotations": []}
    k = 0
    for loc in ("38", "46", "100", "43", "99"):  # 99 is not one of DomainBed's locations
        for c in cats:
            k += 1
            name = f"{k:08x}.jpg"
            (images / name).write_bytes(image_bytes((k % 256, 0, 0), "jpg"))
            data["images"].append({"id": f"img{k}", "file_name": name, "location": loc})
            data["annotations"].append({"image_id": f"img{k}", "category_id": c["id"]})
    data["annotations"].append({"image_id": "img1", "category_id": 1})  # img1: bird and bobcat
    (tmp_path / "caltech_images_20210113.json").write_text(json.dumps(data))
    out = tmp_path / "terra_incognita"
    stats = domainbed.organize_terraincognita(images, tmp_path / "caltech_images_20210113.json", out)
    assert sorted(stats) == ["location_100", "location_38", "location_43", "location_46"]
    assert stats["location_38"]["bobcat"] == 2 and "deer" not in stats["location_38"]
    assert (out / "location_38" / "bobcat" / "00000001.jpg").is_file()
    check = domainbed.check_tree("terraincognita", tmp_path)  # finds terra_incognita/ inside
    assert check.counts["location_38"]["bobcat"] == 2 and check.num_images == 41
    domainbed.convert("terraincognita", out, tmp_path / "shards")
    info = read_dataset_info(tmp_path / "shards")
    assert info.domains == ("location_100", "location_38", "location_43", "location_46")
    assert info.split("train").num_samples + info.split("val").num_samples == 41


def test_raw_terraincognita_hint(tmp_path):
    (tmp_path / "eccv_18_all_images_sm").mkdir()
    with pytest.raises(DatasetError, match="organize_terraincognita"):
        domainbed.check_tree("terraincognita", tmp_path)


def test_remove_listed_files(tmp_path):
    (tmp_path / "real" / "cat").mkdir(parents=True)
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "real" / "cat" / n).write_bytes(b"x")
    listing = tmp_path / "dups.txt"
    listing.write_text("real/cat/a.jpg\nreal/cat/missing.jpg\n")
    assert domainbed.remove_listed_files(tmp_path, listing) == 1
    assert sorted(p.name for p in (tmp_path / "real" / "cat").iterdir()) == ["b.jpg"]
    listing.write_text("../outside.jpg\n")
    with pytest.raises(DatasetError, match="outside"):
        domainbed.remove_listed_files(tmp_path, listing)


def test_cli_check(tmp_path, capsys):
    from clipood_zoo.data.protocols.__main__ import main
    _tree(tmp_path / "VLCS", __import__("clipood_zoo.data.catalog", fromlist=["VLCS"]).VLCS)
    assert main(["domainbed-check", "vlcs", str(tmp_path)]) == 0
    assert "vlcs OK, 20 images" in capsys.readouterr().out
