#!/usr/bin/env python3
"""A CLIPood training step (MMS loss + ModelBma.update) vs an ERM step (CE on cosine logits, no averaging),
same model, same batch: images/s and peak memory.

    python benchmarks/bench_train_step.py [--arch small|ViT-B-16] [--batch-size 32] [--repeats 10]

A step is what train.py runs per optimizer step: ``TrainStep`` forward (method loss), backward, AdamW
step, zero_grad, and for CLIPood ``ModelBma.update(model, step)`` (train.py's ``exclude_buffers=True``).
Also timed: ERM + timm's ModelEmaV3 (the paper's EMA ablation) and CLIPood with the BMA update from
before the speed fix (benchmarks/_legacy.py). Times are interleaved in one process; peak memory is
measured per variant in a fresh subprocess (CPU: peak RSS growth from before the model is built over 3 steps, from
/proc/self/status VmHWM after resetting it; CUDA: torch.cuda.max_memory_allocated).
Goal: CLIPood step <= 1.05x the ERM step.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

import _common as C
from _legacy import ModelBmaBefore
from clipood_zoo import ModelBma
from clipood_zoo.methods import Clipood, Erm, TrainStep
from clipood_zoo.models.factory import build_classifier

VARIANTS = ("erm", "clipood", "erm_ema", "clipood_bma_before_fix")


class Variant:
    def __init__(self, name: str, arch: str, num_classes: int, batch_size: int, device: torch.device,
                 total_steps: int = 100_000):
        torch.manual_seed(0)
        self.model = build_classifier(arch, num_classes=num_classes).to(device).train()
        size = self.model.image_size
        method = Erm(temperature=0.01) if name.startswith("erm") else Clipood(temperature=0.01, margin_lambda=0.3)
        self.step_module = TrainStep(self.model, method)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.1)
        self.average = None
        if name == "clipood":
            self.average = ModelBma(self.model, total_steps=total_steps, beta=0.5, exclude_buffers=True)
        elif name == "clipood_bma_before_fix":
            self.average = ModelBmaBefore(self.model, total_steps=total_steps, beta=0.5, exclude_buffers=True)
        elif name == "erm_ema":
            self.average = ModelEmaV3(self.model, decay=0.999)
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(batch_size, 3, size, size, generator=g).to(device)
        self.target = torch.randint(num_classes, (batch_size,), generator=g).to(device)
        self.num_updates = 0

    def __call__(self) -> None:
        loss = self.step_module(self.images, self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.average is not None:
            self.average.update(self.model, step=self.num_updates)


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> bool:
    try:  # writing 5 to clear_refs resets the peak RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory(args) -> dict:
    """Run in a subprocess: peak memory of ``args.memory_of`` over a few steps, after model construction."""
    device = torch.device(args.device)
    arch = C.register_small_arch() if args.arch == "small" else args.arch
    # the baseline is taken before the model is built, so the average's copy of the weights counts
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_hwm()
        before = C.rss_mb()
    v = Variant(args.memory_of, arch, args.num_classes, args.batch_size, device)
    for _ in range(3):
        v()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"peak_mb": peak, "peak_growth_mb": peak - before / 2**20, "measure": "cuda max_memory_allocated"}
    return {"peak_mb": _vm_hwm_mb(), "peak_growth_mb": _vm_hwm_mb() - before,
            "measure": "VmHWM (peak RSS) after reset" if reset else "VmHWM since process start"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="small")
    p.add_argument("--num-classes", type=int, default=444)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-of", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-name", default="train_step")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args)))
        return
    info = C.machine_info()
    device = torch.device(args.device)
    arch = C.register_small_arch() if args.arch == "small" else args.arch
    variants = {n: Variant(n, arch, args.num_classes, args.batch_size, device) for n in VARIANTS}
    times = C.interleaved(dict(variants), repeats=args.repeats, warmup=2, device=device)
    memory = {}
    for n in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--num-classes", str(args.num_classes),
                              "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                              "--device", args.device, "--memory-of", n],
                             capture_output=True, text=True, check=True, cwd=str(Path(__file__).parent))
        memory[n] = json.loads(out.stdout.strip().splitlines()[-1])
    base, base_min = times["erm"]["median_s"], times["erm"]["min_s"]
    rows = [{"arch": arch, "batch": args.batch_size, "step": n, "images_per_s": args.batch_size / t["median_s"],
             "median_ms": t["median_s"] * 1e3, "min_ms": t["min_s"] * 1e3, "ratio_vs_erm": t["median_s"] / base,
             "ratio_min_vs_erm": t["min_s"] / base_min, "peak_mem_growth_mb": memory[n]["peak_growth_mb"],
             "load_1m": C.load_avg()[0]} for n, t in times.items()]
    print(C.table(rows))
    ratio = times["clipood"]["median_s"] / base
    print(f"goal: CLIPood step <= 1.05x ERM step: {ratio:.3f}x (min-based {times['clipood']['min_s'] / base_min:.3f}x) "
          f"{'OK' if ratio <= 1.05 else 'MISSED'}")
    C.save(args.out_name, info, {"rows": rows, "memory": memory, "goal": "CLIPood step <= 1.05x ERM step",
                                 "ratio": ratio, "num_classes": args.num_classes})


if __name__ == "__main__":
    main()
