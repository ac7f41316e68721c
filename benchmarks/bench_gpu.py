#!/usr/bin/env python3
"""The GPU benchmark: ViT-B/16 at 224 px (random init), CLIPood vs ERM vs ERM+EMA in one run.

    python benchmarks/bench_gpu.py                 # on a CUDA machine; run through benchmarks/gpu.sh
    python benchmarks/bench_gpu.py --dry-run       # CPU, tiny model and sizes: checks the script only

Per variant (``erm``: CE on cosine logits, last weights; ``clipood``: MMS + ModelBma.update;
``erm_ema``: CE + timm's ModelEmaV3.update), the step train.py runs — TrainStep under bf16 autocast and
torch.compile, backward, timm's AdamW, zero_grad, the weight-average update — is timed with CUDA events
over ``--steps`` steps after ``--warmup`` (compilation happens there):

* train images/s, and the ratio to ERM;
* model FLOPs utilisation: FLOPs of one forward+backward (torch.utils.flop_counter, the matmuls and
  attention) x steps/s, over the card's dense bf16 peak from a table by card name (H100 SXM 989 TFLOP/s),
  and over a measured 8192^3 bf16 matmul as a second reference;
* the weight-average update's time and its share of the step;
* peak memory (torch.cuda.max_memory_allocated from before the model is built, so the average's copy counts);
* host syncs in one step (torch.cuda.set_sync_debug_mode('warn')), which should be 0.

Then validate images/s: ``clipood_zoo.evaluate.evaluate`` (cached class embeddings, channels-last, bf16,
compiled) vs the open_clip README zero-shot loop (encode_text of all prompts every batch).
Writes benchmarks/results/gpu.json (gpu_dryrun.json with --dry-run) and, when $OUT is set, a copy there.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
import warnings
from typing import Dict, Optional

import torch
import torch.nn.functional as F

import _common as C

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched by substring of the device name, first hit wins
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0),
)


def card_peak_tflops(name: str) -> Optional[float]:
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


class Timer:
    """Elapsed seconds between two points; CUDA events on a GPU (no host sync until read)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def memory_reset(device: torch.device) -> None:
    torch._dynamo.reset()  # compiled graphs of the previous variant hold on to its tensors
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def measured_matmul_tflops(device: torch.device, n: int) -> Optional[float]:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    with Timer(device) as t:
        for _ in range(10):
            a @ b
    return 2 * n**3 * 10 / t.seconds / 1e12


def count_syncs(fn) -> Optional[int]:
    """Host-device synchronisations during ``fn()`` (CUDA only), counted from sync-debug warnings."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def run_variant(name: str, args, arch: str, device: torch.device, flops_per_step: Optional[float]) -> Dict:
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    from clipood_zoo import ModelBma
    from clipood_zoo.evaluate import autocast
    from clipood_zoo.methods import Clipood, Erm, TrainStep
    from clipood_zoo.models.factory import build_classifier

    memory_reset(device)
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=args.num_classes).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    method = Clipood(margin_lambda=0.3) if name == "clipood" else Erm()
    method.resolve_temperature(model)  # once, as train.py does (a host sync, outside the loop)
    step_module = TrainStep(model, method)
    train_step = torch.compile(step_module) if args.compile else step_module
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-5, weight_decay=0.1)
    total = args.warmup + args.steps + 1000
    average = None
    if name == "clipood":
        average = ModelBma(model, total_steps=total, beta=0.5, exclude_buffers=True)
    elif name == "erm_ema":
        average = ModelEmaV3(model, decay=0.999)
    size = model.image_size
    g = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(args.batch_size, 3, size, size, device=device, generator=g)
    images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(args.num_classes, (args.batch_size,), device=device, generator=g)
    amp = torch.bfloat16 if args.amp else None
    state = {"step": 0}

    def one_step():
        with autocast(device, amp):
            loss = train_step(images, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        if average is not None:
            average.update(model, step=state["step"])
        return loss

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    with Timer(device) as t:
        for _ in range(args.steps):
            one_step()
    step_s = t.seconds / args.steps
    update_s = None
    if average is not None:
        with Timer(device) as tu:
            for _ in range(args.steps):
                state["step"] += 1
                average.update(model, step=state["step"])
        update_s = tu.seconds / args.steps
    syncs = count_syncs(one_step)
    row = {
        "variant": name, "batch": args.batch_size, "image_size": size, "compile": args.compile,
        "amp": "bf16" if args.amp else "fp32", "step_ms": step_s * 1e3, "train_images_per_s": args.batch_size / step_s,
        "average_update_ms": None if update_s is None else update_s * 1e3,
        "average_update_share": None if update_s is None else update_s / step_s,
        "peak_mem_mb": peak_mb(device), "host_syncs_per_step": syncs, "warmup_s": warmup_s,
    }
    if flops_per_step:
        row["achieved_tflops"] = flops_per_step / step_s / 1e12
    return row  # its tensors are freed on return; the next variant's memory_reset() clears the caches


def step_flops(args, arch: str, device: torch.device) -> float:
    """FLOPs of one forward + backward of the image tower and the loss (bf16 autocast, batch ``args.batch_size``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from clipood_zoo.evaluate import autocast
    from clipood_zoo.methods import Clipood, TrainStep
    from clipood_zoo.models.factory import build_classifier
    model = build_classifier(arch, num_classes=args.num_classes).to(device).train()
    step = TrainStep(model, Clipood(temperature=0.01))
    images = torch.randn(args.batch_size, 3, model.image_size, model.image_size, device=device)
    target = torch.randint(args.num_classes, (args.batch_size,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, torch.bfloat16 if args.amp else None):
            loss = step(images, target)
        loss.backward()
    total = counter.get_total_flops()
    del model, step
    memory_reset(device)
    return float(total)


def bench_validate(args, arch: str, device: torch.device) -> list:
    import open_clip

    from clipood_zoo.evaluate import autocast, evaluate
    from clipood_zoo.models.classifier import ClipoodClassifier

    memory_reset(device)
    torch.manual_seed(0)
    clip = open_clip.create_model(arch).to(device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator(device=device).manual_seed(2)
    batches = [(torch.randn(args.eval_batch_size, 3, size, size, device=device, generator=g),
                torch.randint(args.num_classes, (args.eval_batch_size,), device=device, generator=g),
                torch.zeros(args.eval_batch_size, dtype=torch.long, device=device)) for _ in range(args.eval_batches)]
    n_images = args.eval_batch_size * args.eval_batches
    text = tokenizer([f"a photo of a class {i}." for i in range(args.num_classes)]).to(device)
    amp = torch.bfloat16 if args.amp else None

    def readme_loop(limit: int):
        correct = torch.zeros((), device=device)
        with torch.no_grad(), autocast(device, amp):
            for images, target, _ in batches[:limit]:
                image_features = clip.encode_image(images)
                text_features = clip.encode_text(text)
                image_features = image_features / image_features.norm(dim=-1, keepdim=True)
                text_features = text_features / text_features.norm(dim=-1, keepdim=True)
                probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
                correct += (probs.argmax(dim=-1) == target).sum().item()  # .item(): what the README-style loop does
        return correct

    with torch.no_grad(), autocast(device, amp):
        class_embeddings = F.normalize(clip.encode_text(text).float(), dim=-1)
    model = ClipoodClassifier(clip.visual, class_embeddings, logit_scale=100.0, image_size=size).eval()
    model = model.to(memory_format=torch.channels_last)
    eval_model = torch.compile(model) if args.compile else model

    readme_batches = max(1, min(args.eval_batches, args.readme_batches))
    readme_loop(1)
    with Timer(device) as t_readme:
        readme_loop(readme_batches)
    evaluate(eval_model, batches[:2], device, ["random"], amp_dtype=amp, channels_last=True)  # compile + warm-up
    with Timer(device) as t_zoo:
        evaluate(eval_model, batches, device, ["random"], amp_dtype=amp, channels_last=True)
    readme_ips = readme_batches * args.eval_batch_size / t_readme.seconds
    zoo_ips = n_images / t_zoo.seconds
    return [{"path": "open_clip_readme_loop", "batch": args.eval_batch_size, "images_per_s": readme_ips,
             "speedup_vs_readme": 1.0},
            {"path": "zoo_evaluate (validate.py)", "batch": args.eval_batch_size, "images_per_s": zoo_ips,
             "speedup_vs_readme": zoo_ips / readme_ips}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--readme-batches", type=int, default=5, help="batches of the slow README loop to time")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--variants", nargs="+", default=["erm", "clipood", "erm_ema"])
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, the small 40 px arch and tiny sizes, no compile: checks that the script runs")
    p.add_argument("--compile-in-dry-run", action="store_true", help="--dry-run with torch.compile (slow on CPU)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("bench_gpu.py needs a CUDA device; use --dry-run to check it on CPU")
    if args.dry_run:
        args.arch = C.register_small_arch()
        args.batch_size, args.num_classes, args.steps, args.warmup = 4, 16, 2, 1
        args.eval_batch_size, args.eval_batches, args.readme_batches, args.matmul_n = 8, 2, 1, 256
        args.compile = args.compile_in_dry_run
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = C.machine_info()
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)"
    peak = card_peak_tflops(card) if device.type == "cuda" else None
    matmul = measured_matmul_tflops(device, args.matmul_n)
    print(f"device {card}; bf16 dense peak from the table {peak} TFLOP/s; measured {args.matmul_n}^3 bf16 matmul "
          f"{matmul:.1f} TFLOP/s", flush=True)
    flops = step_flops(args, args.arch, device)
    print(f"{args.arch}: {flops / 1e9 / args.batch_size:.2f} GFLOP per image per training step (fwd+bwd)", flush=True)
    rows = []
    for name in args.variants:
        row = run_variant(name, args, args.arch, device, flops)
        if peak:
            row["mfu_vs_card_peak"] = row["achieved_tflops"] / peak
        if matmul:
            row["mfu_vs_measured_matmul"] = row["achieved_tflops"] / matmul
        rows.append(row)
        print(json.dumps(row), flush=True)
    erm = next((r for r in rows if r["variant"] == "erm"), None)
    for r in rows:
        r["step_ratio_vs_erm"] = r["step_ms"] / erm["step_ms"] if erm else None
    print(C.table(rows, ["variant", "train_images_per_s", "step_ms", "step_ratio_vs_erm", "average_update_ms",
                         "average_update_share", "peak_mem_mb", "host_syncs_per_step",
                         *(["achieved_tflops", "mfu_vs_card_peak", "mfu_vs_measured_matmul"] if flops else [])]))
    val_rows = bench_validate(args, args.arch, device)
    print(C.table(val_rows))
    name = "gpu_dryrun" if args.dry_run else "gpu"
    path = C.save(name, {**info, "card": card, "card_bf16_peak_tflops": peak, "measured_matmul_tflops": matmul},
                  {"arch": args.arch, "args": vars(args), "flops_per_step": flops, "train": rows, "validate": val_rows})
    out = os.environ.get("OUT")
    if out and os.path.isdir(out):
        shutil.copy(path, os.path.join(out, path.name))


if __name__ == "__main__":
    main()
