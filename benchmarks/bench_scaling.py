#!/usr/bin/env python3
"""Training-step time as the number of classes grows: C = 10, 100, 1000, 10000.

    python benchmarks/bench_scaling.py [--classes 10 100 1000 10000] [--batch-size 32] [--repeats 5]

The class text embeddings are a cached [C, D] buffer, so the text tower never runs; MMS's adaptive
margin is computed as ``(f - lambda * t_y) @ T.T`` (one [B, D] x [D, C] product), never as a C x C matrix.
Per C it times, interleaved:

* ``mms_loss+bwd``: clipood_zoo.losses.mms_loss + backward on [B, D] image features (the head's cost alone);
* ``ce_loss+bwd``: the same with margin 0 (ERM);
* ``naive_CxC_margin+bwd``: the margin as a [C, C] matrix ``lambda * (1 - T T^T)`` built every step, the
  form the implementation avoids (skipped above --naive-max classes);
* ``model_step``: the small ViT's full forward + MMS loss + backward at 40 px (what a step costs in all).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import _common as C
from clipood_zoo.losses import mms_loss
from clipood_zoo.methods import Clipood, TrainStep
from clipood_zoo.models.factory import build_classifier


def naive_cxc_loss(features, text, target, temperature, margin_lambda):
    f = F.normalize(features, dim=-1)
    t = F.normalize(text, dim=-1)
    margin = margin_lambda * (1.0 - t @ t.T)  # [C, C]
    logits = (f @ t.T + margin[target]) / temperature
    return F.cross_entropy(logits, target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-max", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's choice)")
    p.add_argument("--out-name", default="scaling")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info()
    arch = C.register_small_arch()
    rows = []
    for num_classes in args.classes:
        torch.manual_seed(0)
        model = build_classifier(arch, num_classes=num_classes).train()
        step = TrainStep(model, Clipood(temperature=0.01, margin_lambda=0.3))
        text = model.head.weight
        d = text.shape[1]
        feats = torch.randn(args.batch_size, d, requires_grad=True)
        target = torch.randint(num_classes, (args.batch_size,))
        images = torch.randn(args.batch_size, 3, model.image_size, model.image_size)

        def mms():
            mms_loss(feats, text, target, temperature=0.01, margin_lambda=0.3).backward()

        def ce():
            mms_loss(feats, text, target, temperature=0.01, margin_lambda=0.0).backward()

        def naive():
            naive_cxc_loss(feats, text, target, 0.01, 0.3).backward()

        def full():
            step(images, target).backward()
            model.zero_grad(set_to_none=True)

        fns = {"mms_loss+bwd": mms, "ce_loss+bwd": ce}
        if num_classes <= args.naive_max:
            fns["naive_CxC_margin+bwd"] = naive
        with torch.no_grad():  # same loss value, different cost
            a = mms_loss(feats, text, target, temperature=0.01, margin_lambda=0.3)
            b = naive_cxc_loss(feats, text, target, 0.01, 0.3)
        # the loss calls take ~1-10 ms: run each several times per measurement, and keep the minimum too
        times = C.interleaved(fns, repeats=args.repeats, warmup=1, inner=10 if num_classes <= 1000 else 2)
        times.update(C.interleaved({"model_step": full}, repeats=args.repeats, warmup=1))
        base = times["ce_loss+bwd"]["median_s"]
        row = {"classes": num_classes, "D": d, "batch": args.batch_size}
        for k, t in times.items():
            row[f"{k}_ms"] = t["median_s"] * 1e3
        row["mms_min_ms"] = times["mms_loss+bwd"]["min_s"] * 1e3
        row["ce_min_ms"] = times["ce_loss+bwd"]["min_s"] * 1e3
        row["mms/ce"] = times["mms_loss+bwd"]["median_s"] / base
        row["mms/ce_min"] = times["mms_loss+bwd"]["min_s"] / times["ce_loss+bwd"]["min_s"]
        row["mms_share_of_step"] = times["mms_loss+bwd"]["median_s"] / times["model_step"]["median_s"]
        if "naive_CxC_margin+bwd" in times:
            row["naive/mms"] = times["naive_CxC_margin+bwd"]["median_s"] / times["mms_loss+bwd"]["median_s"]
            row["naive_CxC_MB"] = num_classes * num_classes * 4 / 2**20
        row["mms==naive_loss"] = bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4))
        row["load_1m"] = C.load_avg()[0]
        rows.append(row)
        print(row, flush=True)
    print(C.table(rows))
    C.save(args.out_name, info, {"rows": rows, "note": "times are medians in ms; the margin never builds a CxC matrix"})


if __name__ == "__main__":
    main()
