#!/usr/bin/env python
"""Build the raw EmojiDG tree from pinned npm tarballs.

    python tools/emojidg/build.py --out data/emojidg_raw                            # benchmark v1
    python tools/emojidg/build.py --version v2 --out data/emojidg_v2_raw             # benchmark v2

``--version`` picks the sources, styles and render counts of a benchmark version
(tools/emojidg/versions.py); v1 is the default and its images are byte-identical to the v1 release.

Output (DomainBed-style):
    OUT/<domain>/<class_dirname>/<n>.png            downstream domains: 3d, flat, mono, line
    OUT/pretrain/<style>/<class_dirname>/<n>.png    pretraining ("web") styles, never downstream ones
    OUT/licenses/<package>/                          each set's LICENSE / README / package.json
    OUT/metadata.json                                classes, base/new split, counts, sources, seed, size
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes `emojidg` importable as a script

from emojidg import assets, catalog, render, sources  # noqa: E402
from emojidg.paths import occupied  # noqa: E402
from emojidg.versions import CLASS_SELECTION_VERSION, DEFAULT_VERSION, VERSION_KEY, VERSIONS  # noqa: E402

DOWNSTREAM_ORDER = ["3d", "flat", "mono", "line"]


def _render_job(job: tuple) -> tuple[str, str, int]:
    """Worker: render n variants of one (style, class) source image and write them as PNGs."""
    style, folder, dirname, asset, n, seed, size = job
    out = Path(folder) / dirname
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(render.render_variants(asset, size, n, render.stable_seed(seed, style, dirname))):
        im.save(out / f"{i}.png")
    return style, dirname, n


def _progress(it, total: int):
    try:
        from tqdm import tqdm
        return tqdm(it, total=total, desc="render", mininterval=2.0)
    except ImportError:
        return it


def version_styles(pkg: sources.Package, version: str) -> dict[str, str]:
    """The styles a package provides in benchmark ``version`` (style -> role): the manifest's, less the
    pretraining styles the version drops (v2: OpenMoji colour), for the metadata and the attribution."""
    return {s: r for s, r in pkg.styles.items() if s not in VERSIONS[version].dropped_pretrain_styles}


def pretrain_styles(packages: list[sources.Package], version: str) -> list[str]:
    """The styles benchmark ``version`` pretrains on, in manifest order."""
    return [s for p in packages if sources.in_version(p, version)
            for s, role in version_styles(p, version).items() if role == "pretrain"]


def selection_styles(packages: list[sources.Package]) -> list[str]:
    """The pretraining styles classes are selected with: those of the class-selection version (v1),
    whatever the version built, so every version has the same labels (the packages of a later version
    include v1's)."""
    return pretrain_styles(packages, CLASS_SELECTION_VERSION)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/emojidg_raw"))
    p.add_argument("--cache", type=Path, default=Path("data/npm_cache"), help="npm tarball cache")
    p.add_argument("--version", choices=sorted(VERSIONS), default=DEFAULT_VERSION,
                   help="benchmark version: its sources, pretraining styles and render counts")
    p.add_argument("--size", type=int, default=40, help="output image side in pixels")
    p.add_argument("--renders", type=int, default=None,
                   help="renders per downstream source image (default: the version's, v1 4, v2 10)")
    p.add_argument("--pretrain-renders", type=int, default=None,
                   help="renders per pretraining source image (default: the version's, v1 4, v2 10)")
    p.add_argument("--seed", type=int, default=0, help="seeds backgrounds/placement and the base/new split")
    p.add_argument("--min-pretrain", type=int, default=7, help="a class needs this many pretraining styles")
    p.add_argument("--max-classes", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="render processes (<= 2 on the shared box)")
    p.add_argument("--limit-classes", type=int, default=None, help="debug: render only the first N classes")
    p.add_argument("--pin", action="store_true", help="record (re-pin) tarball sha256s in sources.json")
    p.add_argument("--overwrite", action="store_true", help="replace the images of an --out that already holds a tree")
    args = p.parse_args(argv)
    version = VERSIONS[args.version]
    args.renders = version.renders if args.renders is None else args.renders
    args.pretrain_renders = version.pretrain_renders if args.pretrain_renders is None else args.pretrain_renders
    if occupied([args.out]) and not args.overwrite:
        p.exit(2, f"build.py: error: {args.out} already holds data (an earlier build?); pick an empty --out, or pass "
                  "--overwrite to replace its images\n")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    version = VERSIONS[args.version]
    packages = [p for p in sources.load_manifest() if sources.in_version(p, version.name)]
    dirs = sources.fetch_all(packages, args.cache, pin=args.pin)
    print(f"fetched+verified {len(packages)} tarballs in {time.time() - t0:.1f}s")

    entries = catalog.load_openmoji_catalog(dirs["openmoji"] / "data" / "openmoji.json")
    style_assets: dict[str, dict] = {}
    roles: dict[str, str] = {}
    for pkg in packages:
        for style, role in pkg.styles.items():
            style_assets[style] = assets.load_style(style, dirs[pkg.name], entries)
            roles[style] = role
    downstream = [d for d in DOWNSTREAM_ORDER if roles.get(d) == "downstream"]
    pretrain = pretrain_styles(packages, version.name)
    available = {s: set(a) for s, a in style_assets.items()}
    classes, stats = catalog.select_classes(entries, available, downstream, selection_styles(packages),
                                            args.min_pretrain, args.max_classes)
    base, new = catalog.split_base_new(classes, args.seed)
    dirnames = [catalog.dirname_for(c.name) for c in classes]
    assert len(set(dirnames)) == len(dirnames), "class folder names collide"
    print(f"{len(classes)} classes ({len(base)} base / {len(new)} new); selection: "
          f"{ {k: v for k, v in stats.items() if k != 'near_duplicates_dropped'} }")

    for sub in downstream + ["pretrain", "licenses"]:  # only folders this tool writes
        shutil.rmtree(args.out / sub, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        sources.copy_attribution(dirs[pkg.name], args.out / "licenses" / pkg.safe_name)
    shipped = [dataclasses.replace(p, styles=version_styles(p, version.name)) for p in packages]  # what is rendered
    sources.write_attribution(shipped, dirs, args.out / "licenses")

    render_classes = list(zip(classes, dirnames))[: args.limit_classes]
    jobs = []
    for style in downstream + pretrain:
        is_down = style in downstream
        folder = args.out / style if is_down else args.out / "pretrain" / style
        n = args.renders if is_down else args.pretrain_renders
        for c, d in render_classes:
            if c.seq in style_assets[style]:
                jobs.append((style, str(folder), d, style_assets[style][c.seq], n, args.seed, args.size))
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    t1 = time.time()
    if args.workers > 1:
        with mp.get_context("fork").Pool(min(args.workers, 2)) as pool:
            for style, d, n in _progress(pool.imap_unordered(_render_job, jobs, chunksize=8), len(jobs)):
                counts[style][d] = n
    else:
        for style, d, n in _progress(map(_render_job, jobs), len(jobs)):
            counts[style][d] = n
    render_s = time.time() - t1

    meta = {
        "name": "EmojiDG", VERSION_KEY: version.name,
        "seed": args.seed, "size": args.size,
        "renders": {"downstream": args.renders, "pretrain": args.pretrain_renders},
        "domains": downstream, "pretrain_styles": pretrain,
        "classes": [{"index": i, "name": c.name, "codepoints": c.seq, "emoji": c.emoji,
                     "category": catalog.CATEGORIES[c.category], "subgroup": c.subgroup,
                     "keywords": c.keywords, "dirname": d,
                     "pretrain_styles": [s for s in pretrain if c.seq in available[s]]}
                    for i, (c, d) in enumerate(zip(classes, dirnames))],
        "base_classes": base, "new_classes": new,
        "split_rule": catalog.split_base_new.__doc__.strip(),
        "selection": {"min_pretrain": args.min_pretrain, "max_classes": args.max_classes,
                      "rules": catalog.reject_reason.__doc__.strip(),
                      "near_duplicates": catalog.drop_near_duplicates.__doc__.strip(), **stats},
        "counts": {s: dict(sorted(counts[s].items())) for s in downstream + pretrain},
        "sources": [{"name": p.name, "version": p.version, "sha256": p.sha256, "license": p.license,
                     "homepage": p.homepage, "role": p.role, "styles": p.styles,
                     "tarball_bytes": p.extra.get("tarball_bytes")} for p in shipped],
    }
    (args.out / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")

    total_files = sum(sum(v.values()) for v in counts.values())
    out_bytes = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    subset_bytes = sum((args.out / d / dn / "0.png").stat().st_size
                       for d in downstream for dn in counts[d])
    summary = {VERSION_KEY: version.name, "classes": len(classes), "base": len(base), "new": len(new), "images": total_files,
               "per_style_images": {s: sum(counts[s].values()) for s in downstream + pretrain},
               "per_style_classes": {s: len(counts[s]) for s in downstream + pretrain},
               "out_bytes": out_bytes, "subset_1render_downstream_bytes": subset_bytes,
               "render_s": round(render_s, 1), "total_s": round(time.time() - t0, 1)}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
