#!/usr/bin/env python
"""Run the EmojiDG leave-one-domain-out study with train.py and validate.py, then ship the weights.

    python tools/emojidg/run_benchmark.py --data-dir data/emojidg --out output/emojidg --seeds 0 1 2 --ship

For every held-out domain and seed: zero-shot (validate only), ERM and CLIPood, and the paper's
ablations (MMS vs CE, adaptive vs fixed margin, BMA vs EMA vs last weights), each fine-tuned from
``clip_vitt_emoji`` on the other domains' *base* classes with the same budget, selected on the source
domains' ``val`` split, and scored by validate.py on the held-out domain's ``val`` split in benchmark v1,
its ``test`` split (every render) from v2 (all 444 classes, plus base/new restricted; the version is
read from the data's ``_info.json``). Every result is a validate.py JSON file under ``OUT/results``;
``tools/emojidg/report.py`` turns them into the README table and plots. Finished runs are skipped, so
the command can be re-run after an interruption. ``--ship`` re-saves the first seed's CLIPood and ERM
models as fp16 into ``weights/`` and records their sha256 in ``clipood_zoo/models/shipped_weights.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import clipood_zoo  # noqa: E402
from clipood_zoo.data import emojidg  # noqa: E402
from clipood_zoo.hub import sha256_file  # noqa: E402
from clipood_zoo.models.emoji import MANIFEST, RECIPE  # noqa: E402
from emojidg.paths import repo_relative  # noqa: E402
from emojidg.versions import card_section, held_out_split, version_of  # noqa: E402

# variant -> train.py flags; 'zeroshot' trains nothing
VARIANTS: Dict[str, List[str]] = {
    "erm": ["--method", "erm"],
    "clipood": ["--method", "clipood"],
    "ce_bma": ["--method", "clipood", "--margin-lambda", "0"],
    "fixed_margin": ["--method", "clipood", "--fixed-margin"],
    "clipood_ema": ["--method", "clipood", "--model-ema", "--model-ema-decay", "0.99"],
    "clipood_last": ["--method", "clipood", "--no-bma"],
}
SHIPPED_VARIANTS = ("clipood", "erm")


def run(cmd: List[str]) -> None:
    """Run ``cmd`` from the repository root (so its repository-relative paths resolve)."""
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def data_info(data_dir: Path) -> dict:
    """The shards' ``_info.json`` (its benchmark version decides the held-out split)."""
    return json.loads((data_dir / "_info.json").read_text())


def validate_command(model: str, checkpoint: Path | None, data_dir: Path, domain: str, out: Path,
                     split: str = "val") -> List[str]:
    """validate.py's argv for the held-out ``domain`` scored on ``split``: the row in ``out`` and, beside
    it, the per-image predictions report.py pairs for its intervals."""
    cmd = ["validate.py", "--model", model, "--data-dir", repo_relative(data_dir), "--split", split,
           "--domains", domain, "--results-file", repo_relative(out), "--workers", "2",
           "--predictions-file", repo_relative(out.with_suffix(".predictions.json"))]
    return cmd + (["--pretrained"] if checkpoint is None else ["--checkpoint", repo_relative(checkpoint)])


def validate(model: str, checkpoint: Path | None, data_dir: Path, domain: str, out: Path) -> None:
    run([sys.executable, *validate_command(model, checkpoint, data_dir, domain, out,
                                           held_out_split(data_info(data_dir)))])


def train_command(variant: str, domain: str, seed: int, data_dir: Path, runs: Path,
                  eval_split: str = "val") -> List[str]:
    """train.py's argv for one run; paths inside the repository are relative, because train.py writes
    its command into the model card, and a card's command must run from a clone. ``eval_split`` is the
    held-out domain's reported split (named only when it is not train.py's default ``val``)."""
    return ["train.py", "--model", "clip_vitt_emoji", "--pretrained", "--data-dir", repo_relative(data_dir),
            "--holdout", domain, "--train-classes", RECIPE["train_classes"], "--steps", str(RECIPE["steps"]),
            "-b", str(RECIPE["batch_size"]), "--lr", str(RECIPE["lr"]), "--warmup-steps", str(RECIPE["warmup_steps"]),
            "--weight-decay", str(RECIPE["weight_decay"]), "--eval-interval", "4", "--log-interval", "100",
            "--seed", str(seed), "--output", repo_relative(runs), "--experiment", f"{variant}-{domain}-s{seed}",
            "--workers", "1", "--export-name", f"{variant}_vitt_emojidg_{domain}", *VARIANTS[variant],
            *(["--eval-split", eval_split] if eval_split != "val" else [])]


def train(variant: str, domain: str, seed: int, data_dir: Path, runs: Path) -> Path:
    run([sys.executable, *train_command(variant, domain, seed, data_dir, runs, held_out_split(data_info(data_dir)))])
    return runs / f"{variant}-{domain}-s{seed}"


def record_shipped(names: List[str]) -> None:
    """Write each ``weights/<name>/model.safetensors``'s sha256 and logit scale into the manifest the registry
    reads (so that the registered cfg says the scale the weights hold)."""
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    for name in names:
        path = REPO / "weights" / name / "model.safetensors"
        scale = round(float(load_file(path)["head.logit_scale"].float().exp()), 4)
        manifest[name] = {"file": f"{name}/model.safetensors", "sha256": sha256_file(path), "logit_scale": scale}
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def ship(runs: Path, results: Path, seed: int, info: dict) -> None:
    """fp16 copies of the selected models in weights/, with model cards (naming the benchmark version of
    the data ``info`` describes), recorded in the manifest."""
    names, split = [], held_out_split(info)
    for variant in SHIPPED_VARIANTS:
        for domain in emojidg.DOMAINS:
            name = f"{variant}_vitt_emojidg_{domain}"
            model = clipood_zoo.create_model(name, checkpoint_path=runs / f"{variant}-{domain}-s{seed}")
            row = json.loads((results / f"{variant}-{domain}-s{seed}.json").read_text())[0]
            card = (runs / f"{variant}-{domain}-s{seed}" / "README.md").read_text().split("## Training", 1)[-1]
            sections = {
                **card_section(version_of(info)),
                "Training": card.split("## Results", 1)[0].strip(),
                f"Results (validate.py, held-out domain, {split} split)": "\n".join(
                    f"- {k}: {row[k]}" for k in ("top1", "base_top1", "new_top1", "hm", "num_samples")),
                "Data and licences": "EmojiDG images are rendered from openly licensed emoji sets; see "
                                     "datasets/emojidg-mini/licenses/ATTRIBUTION.md.",
            }
            clipood_zoo.save_pretrained(model, REPO / "weights" / name, model_name=name, dtype=torch.float16,
                                        card_sections=sections)
            names.append(name)
    record_shipped(names)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "emojidg")
    p.add_argument("--out", type=Path, default=REPO / "output" / "emojidg")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--domains", nargs="+", default=list(emojidg.DOMAINS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--ship", action="store_true", help="copy the first seed's CLIPood/ERM models into weights/")
    args = p.parse_args(argv)
    args.data_dir, args.out = args.data_dir.resolve(), args.out.resolve()  # the runs start in REPO, not here
    results, runs = args.out / "results", args.out / "runs"
    results.mkdir(parents=True, exist_ok=True)
    record_shipped(["clip_vitt_emoji"])  # the starting point every run loads with --pretrained
    for domain in args.domains:
        zeroshot = results / f"zeroshot-{domain}.json"
        if not zeroshot.exists():
            validate("clip_vitt_emoji", None, args.data_dir, domain, zeroshot)
        for seed in args.seeds:
            for variant in args.variants:
                out = results / f"{variant}-{domain}-s{seed}.json"
                if out.exists():
                    continue
                run_dir = train(variant, domain, seed, args.data_dir, runs)
                validate(f"{variant}_vitt_emojidg_{domain}" if variant in SHIPPED_VARIANTS else "clip_vitt_emoji",
                         run_dir, args.data_dir, domain, out)
    if args.ship:
        ship(runs, results, args.seeds[0], data_info(args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
