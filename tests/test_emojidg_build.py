"""Offline unit tests of the EmojiDG raw-data builder's pure parts (no npm, no network).

The SVG rasterisation test needs resvg-py (or cairosvg) and is skipped without it; the font tests need
Pillow's FreeType support (they use the font Pillow embeds); the rest needs only numpy and Pillow.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont, features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from emojidg import assets, catalog, render, sources, versions  # noqa: E402
from emojidg.catalog import Entry  # noqa: E402

HAS_RASTERISER = any(importlib.util.find_spec(m) for m in ("resvg_py", "cairosvg"))


def entry(name: str, seq: str = "1F34E", category: str = "food-drink", order: int = 0, **kw) -> Entry:
    return Entry(seq=seq, emoji="", name=name, category=category, subgroup="", order=order, **kw)


# --- codepoint normalisation -------------------------------------------------------------------
@pytest.mark.parametrize("raw,expected", [
    ("1f34e", "1F34E"),
    ("1F34E-FE0F", "1F34E"),
    ("39-fe0f-20e3", "0039-20E3"),
    ("0039-FE0F-20E3", "0039-20E3"),
    ("U+2764_FE0F", "2764"),
    ("1f43b-200d-2744-fe0f", "1F43B-200D-2744"),
])
def test_normalize_seq(raw: str, expected: str) -> None:
    assert catalog.normalize_seq(raw) == expected


def test_seq_from_chars_strips_variation_selector() -> None:
    assert catalog.seq_from_chars("\u2764\ufe0f") == catalog.seq_from_chars("\u2764") == "2764"


def test_names_and_dirnames() -> None:
    assert catalog.class_name("Man’s  Shoe") == "man's shoe"
    assert catalog.dirname_for("man's shoe") == "mans_shoe"
    assert catalog.dirname_for("jack-o-lantern") == "jack_o_lantern"
    assert catalog.slug("Fork & Knife") == "fork-and-knife"


# --- class filtering rules ---------------------------------------------------------------------
@pytest.mark.parametrize("e,reason", [
    (entry("grinning face", "1F600", "smileys-emotion"), "category"),
    (entry("waving hand", "1F44B-1F3FB", "objects"), "skin tone"),
    (entry("flag: japan", "1F1EF-1F1F5", "objects"), "flag"),
    (entry("keycap: 1", "0031-20E3", "objects"), "keycap"),
    (entry("woman cook", "1F469-200D-1F373", "objects"), "person variant"),
    (entry("woman's hat", "1F452", "objects"), "person word"),
    (entry("three o'clock", "1F552", "travel-places"), "clock"),
    (entry("red apple", "1F34E", "food-drink"), None),
    (entry("polar bear", "1F43B-200D-2744", "animals-nature"), None),  # ZWJ without a person is a thing
])
def test_reject_reason(e: Entry, reason: str | None) -> None:
    assert catalog.reject_reason(e) == reason


def test_near_duplicates_keep_shortest_name() -> None:
    es = [entry("dog face", "1F436", order=1), entry("dog", "1F415", order=2),
          entry("sun with face", "1F31E", order=3), entry("sun", "2600", order=4), entry("hot dog", "1F32D", order=5)]
    kept, dropped = catalog.drop_near_duplicates(es)
    assert [e.name for e in kept] == ["dog", "sun", "hot dog"]
    assert ("dog face", "dog") in dropped and ("sun with face", "sun") in dropped


def test_select_classes_requires_all_downstream_and_min_pretrain() -> None:
    es = [entry("red apple", "1F34E", order=1), entry("pear", "1F350", order=2),
          entry("dog", "1F415", "animals-nature", order=3), entry("flag: japan", "1F1EF-1F1F5", order=4)]
    all_seqs = {e.seq for e in es}
    available = {"3d": all_seqs, "line": all_seqs - {"1F350"},
                 "a": all_seqs, "b": {"1F34E", "1F1EF-1F1F5"}, "c": {"1F415"}}
    classes, stats = catalog.select_classes(es, available, ["3d", "line"], ["a", "b", "c"], min_pretrain=2)
    assert [c.name for c in classes] == ["dog", "red apple"]  # pear missing in line, flag rejected
    assert stats["rejected"] == {"flag": 1}
    capped, _ = catalog.select_classes(es, available, ["3d", "line"], ["a", "b", "c"], 1, max_classes=1)
    assert len(capped) == 1


# --- base/new split ----------------------------------------------------------------------------
def _classes() -> list[Entry]:
    cats = list(catalog.CATEGORIES)
    sizes = [7, 6, 5, 4, 9]
    return [entry(f"{cat} {i}", f"{0x1F300 + 50 * k + i:X}", cat) for k, (cat, n) in enumerate(zip(cats, sizes))
            for i in range(n)]


def test_split_is_balanced_and_deterministic() -> None:
    cls = _classes()
    base, new = catalog.split_base_new(cls, seed=0)
    assert sorted(base + new) == list(range(len(cls))) and not set(base) & set(new)
    assert abs(len(base) - len(new)) <= 1
    for cat in catalog.CATEGORIES:
        nb = sum(cls[i].category == cat for i in base)
        nn = sum(cls[i].category == cat for i in new)
        assert abs(nb - nn) <= 1
    assert catalog.split_base_new(cls, seed=0) == (base, new)
    assert catalog.split_base_new(list(cls), seed=1) != (base, new)


# --- rendering ---------------------------------------------------------------------------------
def _png_asset(tmp_path: Path) -> tuple[str, str]:
    im = Image.new("RGBA", (50, 30), (0, 0, 0, 0))
    im.paste((20, 20, 20, 255), (5, 5, 45, 25))
    p = tmp_path / "icon.png"
    im.save(p)
    return ("raster", str(p))


def test_render_raster_size_no_alpha_deterministic(tmp_path: Path) -> None:
    asset = _png_asset(tmp_path)
    a = render.render_variants(asset, 40, 3, seed=7)
    b = render.render_variants(asset, 40, 3, seed=7)
    assert len(a) == 3
    for x, y in zip(a, b):
        assert x.size == (40, 40) and x.mode == "RGB"
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # renders vary


def test_background_contrasts_with_dark_icon() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        bg = np.asarray(render.background(16, rng, icon_lum=0.0), dtype=np.float64)
        assert render.luminance(bg).mean() > 0.2


@pytest.mark.skipif(not HAS_RASTERISER, reason="needs resvg-py or cairosvg")
def test_rasterise_svg_string() -> None:
    icon = {"body": '<circle cx="8" cy="8" r="6" fill="currentColor"/>'}
    svg = assets.iconify_svg(icon, 16, 16)
    rgba = render.svg_to_rgba(svg, 32)
    assert rgba.size == (32, 32) and rgba.getpixel((16, 16))[3] == 255 and rgba.getpixel((0, 0))[3] == 0
    out = render.render_variants(("svg", svg), 24, 2, seed=0)
    assert all(im.size == (24, 24) and im.mode == "RGB" for im in out)


# --- iconify name matching ---------------------------------------------------------------------
def test_iconify_matching_by_chars_and_names(tmp_path: Path) -> None:
    (tmp_path / "icons.json").write_text(json.dumps({"width": 16, "height": 16, "icons": {
        "red-apple": {"body": "<g/>"}, "sakebottleandcup": {"body": "<g/>"},
        "pear-2": {"body": "<g id='alt'/>"}, "x": {"body": "<g id='x'/>"}}}))
    (tmp_path / "chars.json").write_text(json.dumps({"1f415": "x"}))
    cat = [entry("red apple", "1F34E"), entry("sake", "1F376"), entry("pear", "1F350"), entry("dog", "1F415")]
    got = assets.load_iconify(tmp_path, cat)
    assert set(got) == {"1F34E", "1F376", "1F350", "1F415"}  # slug, Unicode name, alternate, chars.json
    assert "id='x'" in got["1F415"][1]


# --- sources: sha256 pin and licence -----------------------------------------------------------
def test_sha256_verification_refuses_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "pkg.tgz"
    f.write_bytes(b"emoji")
    good = sources.sha256_file(f)
    assert sources.verify_sha256(f, good) == good
    with pytest.raises(sources.ChecksumError, match=good):
        sources.verify_sha256(f, "0" * 64)


def _tarball(tmp_path: Path, license_field: str | None) -> Path:
    pj = json.dumps({"name": "x", "version": "1.0.0", **({"license": license_field} if license_field else {})})
    p = tmp_path / "x-1.0.0.tgz"
    with tarfile.open(p, "w:gz") as tf:
        data = pj.encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return p


def test_license_check(tmp_path: Path) -> None:
    pj = sources.read_package_json(_tarball(tmp_path, "CC-BY-4.0"))
    assert sources.check_license("x", pj, "CC-BY-4.0") == "CC-BY-4.0"
    with pytest.raises(sources.LicenseError):
        sources.check_license("x", pj, "MIT")  # differs from the pin
    with pytest.raises(sources.LicenseError):
        sources.check_license("x", {"license": "SEE LICENSE IN LICENSE.md"}, None)
    with pytest.raises(sources.LicenseError):
        sources.check_license("x", {}, None)


def test_fetch_all_uses_cache_and_refuses_bad_pin(tmp_path: Path) -> None:
    tgz = _tarball(tmp_path, "MIT")  # already in the cache, so npm is never called
    pkg = sources.Package(name="x", version="1.0.0", role="pretrain", styles={"x": "pretrain"},
                          license="MIT", homepage="", sha256="f" * 64)
    with pytest.raises(sources.ChecksumError):
        sources.fetch_all([pkg], tmp_path)
    pkg.sha256 = sources.sha256_file(tgz)
    dirs = sources.fetch_all([pkg], tmp_path)
    assert (dirs["x"] / "package.json").exists()


def test_manifest_is_pinned() -> None:
    pkgs = sources.load_manifest()
    assert pkgs and all(p.sha256 and len(p.sha256) == 64 for p in pkgs)
    assert all(p.license in sources.OPEN_LICENSES for p in pkgs)
    roles = {s: r for p in pkgs for s, r in p.styles.items()}
    assert {s for s, r in roles.items() if r == "downstream"} == {"3d", "flat", "mono", "line"}


# --- shards: builders never write over existing data unless asked ------------------------------
def _raw_tree(raw: Path, renders: int = 2, version: str | None = None) -> None:
    """A two-class, one-domain raw tree as tools/emojidg/build.py lays it out (``renders`` per class);
    ``version`` None is a tree written before versions existed (v1)."""
    classes = [{"index": i, "name": n, "dirname": n, "emoji": "", "category": "c"} for i, n in enumerate(["cat", "dog"])]
    (raw / "licenses").mkdir(parents=True)
    (raw / "licenses" / "ATTRIBUTION.md").write_text("test")
    for c in classes:
        (raw / "mono" / c["dirname"]).mkdir(parents=True)
        for r in range(renders):
            Image.new("RGB", (4, 4), (40 * c["index"], r, 0)).save(raw / "mono" / c["dirname"] / f"{r}.png")
    (raw / "metadata.json").write_text(json.dumps({"classes": classes, "domains": ["mono"], "base_classes": [0],
                                                   "new_classes": [1],
                                                   **({versions.VERSION_KEY: version} if version else {})}))


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_shards_refuses_to_overwrite_existing_data_unless_asked(tmp_path: Path, capsys) -> None:
    from emojidg import make_shards

    raw, out, mini = tmp_path / "raw", tmp_path / "out", tmp_path / "mini"
    _raw_tree(raw)
    mini.mkdir()
    (mini / "_info.json").write_text("committed")  # stands for datasets/emojidg-mini
    argv = ["--raw", str(raw), "--out", str(out), "--mini", str(mini), "--shard-size", "2"]
    with pytest.raises(SystemExit) as e:
        make_shards.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("make_shards.py: error: ") and f"{mini} already hold(s) data" in err and "--overwrite" in err
    assert not out.exists() and _snapshot(mini) == {Path("_info.json"): b"committed"}  # nothing written anywhere

    (mini / "_info.json").unlink()
    assert make_shards.main(argv) == 0
    built = _snapshot(out)
    assert Path("train-000000.tar") in built and Path("licenses/ATTRIBUTION.md") in _snapshot(mini)
    with pytest.raises(SystemExit) as e:  # a second build is refused too, for both folders
        make_shards.main(argv)
    assert e.value.code == 2 and f"{out}, {mini} already hold(s) data" in capsys.readouterr().err
    (raw / "licenses" / "ATTRIBUTION.md").write_text("changed")
    assert make_shards.main([*argv, "--overwrite"]) == 0  # asked for: replaced, same shards from the same tree
    assert _snapshot(out) == {**built, Path("licenses/ATTRIBUTION.md"): b"changed"}


def test_build_refuses_an_out_that_holds_data_before_fetching_anything(tmp_path: Path, capsys) -> None:
    from emojidg import build

    (tmp_path / "raw" / "mono").mkdir(parents=True)
    (tmp_path / "raw" / "mono" / "0.png").write_bytes(b"an earlier build")
    with pytest.raises(SystemExit) as e:
        build.main(["--out", str(tmp_path / "raw"), "--cache", str(tmp_path / "cache")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("build.py: error: ") and "already holds data" in err and "--overwrite" in err
    assert (tmp_path / "raw" / "mono" / "0.png").read_bytes() == b"an earlier build"
    assert not (tmp_path / "cache").exists()  # refused before fetching


# --- benchmark versions ------------------------------------------------------------------------
def test_versions_and_what_an_unversioned_file_is() -> None:
    assert versions.get_version("v2").renders == 10 and versions.get_version("v1").renders == 4
    with pytest.raises(ValueError, match=r"unknown EmojiDG benchmark version 'v3'; known: \['v1', 'v2'\]"):
        versions.get_version("v3")
    assert versions.version_of({}) == "v1" and versions.held_out_split({}) == "val"  # written before versions
    assert versions.held_out_split({versions.VERSION_KEY: "v2"}) == "test"
    (title, body), = versions.card_section("v2").items()
    assert title == "Benchmark version" and body.startswith("EmojiDG v2. ") and "4,440" in body


def test_v2_sources_styles_and_unchanged_class_selection() -> None:
    from emojidg import build

    pkgs = sources.load_manifest()
    v1 = [p.name for p in pkgs if sources.in_version(p, "v1")]
    v2 = [p.name for p in pkgs if sources.in_version(p, "v2")]
    assert len(v1) == 11 and v2 == v1 + ["@iconify-json/emojione-monotone", "@fontsource/noto-emoji"]
    v1_styles = ["openmoji", "noto", "twemoji", "blob", "fxemoji", "emojione", "emojione_v1", "streamline"]
    assert build.pretrain_styles(pkgs, "v1") == v1_styles
    # v2 drops OpenMoji colour (the downstream `line` family) and adds the monochrome sets ...
    assert build.pretrain_styles(pkgs, "v2") == v1_styles[1:] + ["emojione_mono", "noto_mono"]
    # ... but selects its classes with v1's styles, so both versions have the same 444 labels
    assert build.selection_styles([p for p in pkgs if sources.in_version(p, "v2")]) == v1_styles
    openmoji = next(p for p in pkgs if p.name == "openmoji")
    assert build.version_styles(openmoji, "v1") == {"openmoji": "pretrain", "line": "downstream"}
    assert build.version_styles(openmoji, "v2") == {"line": "downstream"}  # metadata/attribution say what is used
    new = {p.name: p for p in pkgs}
    assert new["@fontsource/noto-emoji"].license == "OFL-1.1" and new["@fontsource/noto-emoji"].sha256 == (
        "1fe49bb2cf7c2d78f93c0a69b6a431dcfd0d585b7831eba87fae6888ccf8d373")


@pytest.mark.parametrize("version,renders", [("v1", 4), ("v2", 10)])
def test_build_defaults_follow_the_version(tmp_path: Path, version: str, renders: int) -> None:
    from emojidg import build

    args = build.parse_args(["--version", version, "--out", str(tmp_path / "raw")])
    assert (args.renders, args.pretrain_renders) == (renders, renders)
    args = build.parse_args(["--version", version, "--renders", "3", "--out", str(tmp_path / "raw")])
    assert args.renders == 3


@pytest.mark.parametrize("version,splits", [(None, {"train": 6, "val": 2}), ("v2", {"train": 6, "val": 2, "test": 8})])
def test_make_shards_writes_the_versions_splits_and_records_the_version(tmp_path: Path, version, splits) -> None:
    """v2's `test` split holds every render of every class (train and val renders); v1 has none."""
    import tarfile as tf

    from emojidg import make_shards

    raw, out = tmp_path / "raw", tmp_path / "out"
    _raw_tree(raw, renders=4, version=version)
    assert make_shards.main(["--raw", str(raw), "--out", str(out), "--shard-size", "100"]) == 0
    info = json.loads((out / "_info.json").read_text())
    assert info[versions.VERSION_KEY] == (version or "v1")
    assert {k: v["num_samples"] for k, v in info["splits"].items()} == splits
    if version == "v2":
        with tf.open(out / "test-000000.tar") as t:
            keys = sorted({m.name.split(".")[0] for m in t.getmembers()})
        assert keys == sorted(f"mono-{c}-{r}" for c in ("cat", "dog") for r in range(4))


# --- fonts (Fontsource packages: one WOFF per weight) ------------------------------------------
HAS_FREETYPE = features.check("freetype2")


def _fontsource_package(root: Path, weights=(300, 700)) -> Path:
    """A Fontsource-shaped package whose 'emoji' subset is Pillow's embedded font (TrueType bytes;
    FreeType reads TTF and WOFF alike): it draws Latin letters and no emoji."""
    font_bytes = ImageFont.load_default(size=20).font_bytes
    (root / "files").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({"id": "fake-font"}))
    (root / "unicode.json").write_text("{}")
    for w in weights:
        (root / "files" / f"fake-font-emoji-{w}-normal.woff").write_bytes(font_bytes)
    (root / "files" / "fake-font-0-400-normal.woff").write_bytes(font_bytes)  # another subset: not used
    return root


@pytest.mark.skipif(not HAS_FREETYPE, reason="Pillow without FreeType")
def test_font_loader_covers_the_glyphs_the_font_draws(tmp_path: Path) -> None:
    pkg = _fontsource_package(tmp_path)
    cat = [entry("a", "0041", order=0), entry("apple", "1F34E", order=1), entry("ab", "0041-0042", order=2)]
    got = assets.load_style("noto_mono", pkg, cat)
    assert set(got) == {"0041"}  # a missing emoji draws .notdef; two glyphs that do not ligate are not one emoji
    kind, payload = got["0041"]
    spec = json.loads(payload)
    assert kind == "font" and spec["text"] == "A"
    assert [Path(f).name for f in spec["files"]] == ["fake-font-emoji-300-normal.woff", "fake-font-emoji-700-normal.woff"]


@pytest.mark.skipif(not HAS_FREETYPE, reason="Pillow without FreeType")
def test_font_asset_renders_one_image_per_weight_in_turn(tmp_path: Path, monkeypatch) -> None:
    pkg = _fontsource_package(tmp_path)
    asset = assets.load_style("noto_mono", pkg, [entry("a", "0041")])["0041"]
    rgbas = render.load_rgbas(asset, 32)
    assert len(rgbas) == 2 and all(im.size == (32, 32) and im.mode == "RGBA" for im in rgbas)
    alpha = np.asarray(rgbas[0])[..., 3]
    assert alpha.max() == 255 and alpha[0, 0] == 0  # ink in the middle, transparent corners
    assert np.asarray(rgbas[0])[alpha == 255][:, :3].max() == 0  # drawn black
    a = render.render_variants(asset, 24, 3, seed=1)
    assert len(a) == 3 and all(im.size == (24, 24) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, render.render_variants(asset, 24, 3, seed=1)))
    # render i uses weight i mod the number of weights
    monkeypatch.setattr(render, "font_to_rgba", lambda file, text, size: Path(file).name)
    monkeypatch.setattr(render, "compose", lambda rgba, size, rng: rgba)
    assert render.render_variants(asset, 24, 3, seed=1) == [
        "fake-font-emoji-300-normal.woff", "fake-font-emoji-700-normal.woff", "fake-font-emoji-300-normal.woff"]


def test_attribution_credits_iconify_authors_and_font_copyright(tmp_path: Path) -> None:
    iconify, font, bare = tmp_path / "i", tmp_path / "f", tmp_path / "b"
    for d in (iconify, font, bare):
        d.mkdir()
    (iconify / "info.json").write_text(json.dumps({"author": {"name": "Emoji One"}, "license": {"url": "https://cc/by"}}))
    (font / "metadata.json").write_text(json.dumps({"license": {"type": "OFL-1.1", "url": "https://ofl",
                                                                "attribution": "Copyright 2013 Google LLC"}}))
    pkgs = [sources.Package(name=n, version="1", role="pretrain", styles={s: "pretrain"}, license=lic, homepage="h")
            for n, s, lic in [("i", "mono_a", "CC-BY-4.0"), ("f", "mono_b", "OFL-1.1"), ("b", "c", "MIT")]]
    sources.write_attribution(pkgs, {"i": iconify, "f": font, "b": bare}, tmp_path / "out")
    lines = (tmp_path / "out" / "ATTRIBUTION.md").read_text().splitlines()
    assert lines[2:5] == ["- mono_a: i@1 by Emoji One, licence CC-BY-4.0 (https://cc/by), h",
                          "- mono_b: f@1 by Copyright 2013 Google LLC, licence OFL-1.1 (https://ofl), h",
                          "- c: b@1, licence MIT, h"]
