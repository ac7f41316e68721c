#!/usr/bin/env python3
"""Is the loader the bottleneck? Images/s decoded + transformed from shards with 0, 1, 2 workers vs the
images/s of the training step of the model those images feed.

    python benchmarks/bench_data.py [--data-dir data/emojidg] [--batches 30] [--workers 0 1 2]

The loader is ``clipood_zoo.data.create_loader`` with train.py's training transform (timm's
create_transform, random resized crop, colour jitter) at the model's resolution, ``resampled=True`` as
train.py uses it. The model side is one training step (forward, MMS loss, backward, AdamW step) of the
shipped family's small ViT (40 px, patch 8) at train.py's default batch 32. Goal: loader >= 2x the model.
Uses data/emojidg (train split) when present, else the committed datasets/emojidg-mini (val split).

The same loader also reads the same folder from a loopback HTTP server (127.0.0.1, started and stopped
here; ``--no-http`` skips it), interleaved with the disk runs at each worker count. Goal: HTTP >= 0.9x disk.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

import _common as C
from clipood_zoo.data import create_loader, read_dataset_info
from clipood_zoo.methods import Clipood, TrainStep
from clipood_zoo.models.factory import build_classifier
from tests.loopback_http import serve


def pick_data(data_dir):
    for path, split in ((data_dir, None), (C.ROOT / "data" / "emojidg", "train"), (C.MINI_DATA, "val")):
        if path is None:
            continue
        try:
            info = read_dataset_info(path)
        except Exception:  # noqa: BLE001 - a missing or half-built folder: try the next
            continue
        split = split or ("train" if "train" in info.splits else next(iter(info.splits)))
        if split in info.splits:
            return path, split, info
    raise SystemExit("no dataset found: pass --data-dir")


def loader_rate(data_dir, split, transform, batch_size, workers, batches):
    loader = create_loader(data_dir, split, transform=transform, batch_size=batch_size, is_training=True,
                           num_workers=workers, resampled=True, seed=0)
    it = iter(loader)
    t_start = time.perf_counter()
    next(it)  # worker start-up and the first batch, reported apart
    first = time.perf_counter() - t_start
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            images, _, _ = next(it)
        except StopIteration:
            loader.set_epoch(1)
            it = iter(loader)
            images, _, _ = next(it)
        n += images.shape[0]
    dt = time.perf_counter() - t0
    del it
    return n / dt, first


def model_rate(size, num_classes, batch_size, steps):
    torch.manual_seed(0)
    model = build_classifier(C.register_small_arch(), num_classes=num_classes).train()
    step = TrainStep(model, Clipood(temperature=0.05))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    images = torch.randn(batch_size, 3, size, size)
    target = torch.randint(num_classes, (batch_size,))

    def one():
        loss = step(images, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = C.interleaved({"train_step": one}, repeats=steps, warmup=2)["train_step"]
    return batch_size / t["median_s"], batch_size / t["min_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=32, help="train.py's default")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in this process (0: torch's choice)")
    p.add_argument("--out-name", default="data")
    p.add_argument("--no-http", action="store_true", help="skip the loopback HTTP runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from timm.data import create_transform
    info_m = C.machine_info()
    data_dir, split, info = pick_data(args.data_dir)
    size = C.SMALL_CFG["vision_cfg"]["image_size"]
    transform = create_transform((3, size, size), is_training=True, scale=(0.5, 1.0), hflip=0.0, vflip=0.0,
                                 color_jitter=0.2, interpolation="bicubic", mean=OPENAI_DATASET_MEAN,
                                 std=OPENAI_DATASET_STD)
    model_ips, model_best = model_rate(size, len(info.classes), args.batch_size, args.steps)
    rows = [{"what": f"train step (small ViT, {size}px, MMS + AdamW)", "workers": "-", "images_per_s": model_ips,
             "best_images_per_s": model_best, "first_batch_s": "-", "ratio_vs_model": 1.0,
             "load_1m": C.load_avg()[0]}]
    with (contextlib.nullcontext((None, None)) if args.no_http else serve(Path(info.root))) as (url, _):
        http_ratios = []
        for w in args.workers:
            ips, first = loader_rate(data_dir, split, transform, args.batch_size, w, args.batches)
            rows.append({"what": f"loader {Path(str(data_dir)).name}/{split}", "workers": w, "images_per_s": ips,
                         "best_images_per_s": "-", "first_batch_s": first, "ratio_vs_model": ips / model_ips,
                         "load_1m": C.load_avg()[0]})
            if url is None:
                continue
            http_ips, http_first = loader_rate(url, split, transform, args.batch_size, w, args.batches)
            http_ratios.append(http_ips / ips)
            rows.append({"what": f"loader loopback HTTP/{split}", "workers": w, "images_per_s": http_ips,
                         "best_images_per_s": "-", "first_batch_s": http_first, "ratio_vs_model": http_ips / model_ips,
                         "http_vs_disk": http_ips / ips, "load_1m": C.load_avg()[0]})
    print(C.table(rows))
    best = max(r["ratio_vs_model"] for r in rows[1:])
    print(f"goal: loader >= 2x the model's images/s: best {best:.2f}x {'OK' if best >= 2 else 'MISSED'} "
          f"({'the loader is not the bottleneck' if best >= 1 else 'the loader IS the bottleneck'})")
    worst_http = min(http_ratios) if http_ratios else None
    if worst_http is not None:
        print(f"goal: loopback HTTP >= 0.9x disk at every worker count: worst {worst_http:.2f}x "
              f"{'OK' if worst_http >= 0.9 else 'MISSED'}")
    C.save(args.out_name, info_m, {"rows": rows, "data_dir": C.repo_relative(data_dir), "split": split,
                                   "image_size": size, "batch_size": args.batch_size,
                                   "goal": "loader images/s >= 2x training-step images/s; loopback HTTP >= 0.9x disk",
                                   "best_ratio": best, "worst_http_vs_disk": worst_http})


if __name__ == "__main__":
    main()
