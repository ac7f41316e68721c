#!/usr/bin/env python3
"""validate.py's evaluation path vs the strongest evaluation loops users have, same images, same weights.

    python benchmarks/bench_validate.py [--arch small|ViT-B-16] [--batch-size 256] [--repeats 3]

* ``zoo_evaluate``: ``clipood_zoo.evaluate.evaluate`` on a ClipoodClassifier whose class text embeddings
  are a cached [C, D] buffer, channels-last, counts kept on the device (what validate.py runs).
* ``open_clip_train_zero_shot``: open_clip_train's zero-shot evaluation, replicated from
  mlfoundations/open_clip src/open_clip_train/zero_shot.py (``zero_shot_eval`` + ``run_zero_shot_classifier``):
  the classifier is built ONCE with ``open_clip.build_zero_shot_classifier`` (10 classes per batch, as there;
  not timed), then per batch under ``torch.inference_mode()`` and the fp32 autocast (a null context)
  ``model(image=images)`` (CLIP.forward = ``encode_image(normalize=True)``), ``100. * features @ classifier``
  and its ``accuracy`` (top-1/top-5 counts, a ``.item()`` each per batch).
* ``timm_validate_loop``: timm's validate.py loop (huggingface/pytorch-image-models validate.py, ``validate``)
  on the zoo model itself: under ``torch.no_grad()`` ``output = model(input)``, ``criterion(output, target)``
  (CrossEntropyLoss), ``timm.utils.accuracy(output.detach(), target, topk=(1, 5))``, ``AverageMeter``
  updates with ``.item()`` of loss, acc1, acc5 per batch and the batch timer (its log line is left out).
* ``open_clip_readme_loop`` (the WEAK baseline, kept for continuity): per batch ``model.encode_image(images)``
  and ``model.encode_text(text)`` of all tokenized class prompts (open_clip's README puts both inside the
  loop), normalise, ``100 * f @ t.T``, softmax, argmax, ``.item()`` of the correct count.

All see the same pre-decoded batches (from datasets/emojidg-mini for the small arch, its 1776 images
and 444 classes; random tensors for ViT-B-16), so these ratios are the model path alone. They share
image-tower weights and must agree on every prediction (checked on every image before timing).
Goal: zoo_evaluate >= 1.0x open_clip_train's zero-shot loop and timm's validate loop in images/s.

Where validate.py's time goes (small arch only, same run, ``--workers`` loader workers, default 0 so the
parts add up): ``loader_decode_only`` (shards -> PIL images, a transform that returns nothing),
``loader_decode_transform`` (validate.py's eval transform too), ``zoo_evaluate`` (the model alone, pre-decoded)
and ``end_to_end`` (``evaluate`` over the live loader, what ``validate.py`` does).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from timm.utils import AverageMeter, accuracy as timm_accuracy

import _common as C
from clipood_zoo.evaluate import evaluate
from clipood_zoo.models.classifier import ClipoodClassifier


def decode_only(image) -> torch.Tensor:
    """A transform that does nothing with the decoded image: the loader's decode cost alone."""
    return torch.empty(0)


def mini_loader(batch_size: int, size: int, workers: int, decode_only_: bool = False):
    from timm.data import create_transform
    from clipood_zoo.data import create_loader
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    transform = decode_only if decode_only_ else create_transform(
        (3, size, size), interpolation="bicubic", crop_pct=1.0, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
    return create_loader(C.MINI_DATA, "val", transform=transform, batch_size=batch_size, is_training=False,
                         num_workers=workers)


def mini_batches(batch_size: int, size: int):
    from clipood_zoo.data import read_dataset_info
    info = read_dataset_info(C.MINI_DATA)
    return [b for b in mini_loader(batch_size, size, 0)], list(info.classes), list(info.domains)


def open_clip_zero_shot_accuracy(output, target, topk=(1,)):
    """open_clip_train/zero_shot.py's ``accuracy``: correct counts, one ``.item()`` per k."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() for k in topk]


def random_batches(batch_size: int, size: int, num_images: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        batches.append((torch.randn(n, 3, size, size, generator=g), torch.randint(num_classes, (n,), generator=g),
                        torch.zeros(n, dtype=torch.long)))
    return batches, [f"class {i}" for i in range(num_classes)], ["random"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="small", help="'small' (the shipped family's 40 px ViT) or an open_clip arch")
    p.add_argument("--batch-size", type=int, default=256, help="validate.py's default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-images", type=int, default=512, help="random images for a non-small arch")
    p.add_argument("--num-classes", type=int, default=444, help="classes for a non-small arch")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's choice)")
    p.add_argument("--workers", type=int, default=0, help="loader workers for the end-to-end rows")
    p.add_argument("--out-name", default="validate")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info()
    device = torch.device("cpu")
    arch = C.register_small_arch() if args.arch == "small" else args.arch
    torch.manual_seed(0)
    clip = open_clip.create_model(arch).eval()
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, (tuple, list)) else clip.visual.image_size
    if args.arch == "small":
        batches, classes, domains = mini_batches(args.batch_size, size)
    else:
        batches, classes, domains = random_batches(args.batch_size, size, args.num_images, args.num_classes)
    num_images = sum(b[0].shape[0] for b in batches)
    tokenizer = open_clip.get_tokenizer(arch)
    prompts = [f"a photo of a {c}." for c in classes]

    # --- the user's loop, straight from open_clip's README ---------------------------------------------
    text = tokenizer(prompts)
    readme_preds = []

    def readme_loop():
        correct = 0
        readme_preds.clear()
        with torch.no_grad():
            for images, target, _ in batches:
                image_features = clip.encode_image(images)
                text_features = clip.encode_text(text)
                image_features /= image_features.norm(dim=-1, keepdim=True)
                text_features /= text_features.norm(dim=-1, keepdim=True)
                text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
                pred = text_probs.argmax(dim=-1)
                readme_preds.append(pred)
                correct += (pred == target).sum().item()
        return correct

    # --- validate.py's path: cached class embeddings in a ClipoodClassifier -------------------------------
    with torch.no_grad():
        class_embeddings = F.normalize(clip.encode_text(text), dim=-1)
    model = ClipoodClassifier(clip.visual, class_embeddings, logit_scale=100.0, image_size=size).eval()
    model = model.to(memory_format=torch.channels_last)
    zoo_result = {}

    def zoo_loop():
        zoo_result.update(evaluate(model, batches, device, domains, channels_last=True))

    def zoo_loop_no_channels_last():
        evaluate(model, batches, device, domains, channels_last=False)

    # --- open_clip_train's zero-shot evaluation: classifier built once, then the image tower per batch ----
    classifier = open_clip.build_zero_shot_classifier(clip, tokenizer=tokenizer, classnames=classes,
                                                      templates=["a photo of a {}."], num_classes_per_batch=10,
                                                      device=device)
    open_clip_result = {}

    def open_clip_train_loop():
        autocast = contextlib.nullcontext  # open_clip_train's get_autocast for fp32
        with torch.inference_mode():
            top1, top5, n = 0., 0., 0.
            for images, target, _ in batches:
                images = images.to(device=device, dtype=None, non_blocking=True)
                target = target.to(device, non_blocking=True)
                with autocast():
                    output = clip(image=images)
                    image_features = output['image_features'] if isinstance(output, dict) else output[0]
                    logits = 100. * image_features @ classifier
                acc1, acc5 = open_clip_zero_shot_accuracy(logits, target, topk=(1, 5))
                top1 += acc1
                top5 += acc5
                n += images.size(0)
        open_clip_result.update(top1=top1 / n, top5=top5 / n)

    # --- timm's validate.py loop on the zoo model ---------------------------------------------------------
    criterion = nn.CrossEntropyLoss()
    timm_result = {}

    def timm_validate_loop():
        batch_time, losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter(), AverageMeter()
        with torch.no_grad():
            end = time.time()
            for input, target, _ in batches:
                output = model(input)
                loss = criterion(output, target)
                acc1, acc5 = timm_accuracy(output.detach(), target, topk=(1, 5))
                losses.update(loss.item(), input.size(0))
                top1.update(acc1.item(), input.size(0))
                top5.update(acc5.item(), input.size(0))
                batch_time.update(time.time() - end)
                end = time.time()
        timm_result.update(top1=top1.avg, top5=top5.avg)

    # correctness first: every path scores the same top-1, and every image gets the same prediction
    correct = readme_loop()
    zoo_loop()
    open_clip_train_loop()
    timm_validate_loop()
    top1s = {"open_clip_readme_loop": 100.0 * correct / num_images, "zoo_evaluate": zoo_result["top1"],
             "open_clip_train_zero_shot": 100.0 * open_clip_result["top1"], "timm_validate_loop": timm_result["top1"]}
    agree = all(abs(v - top1s["zoo_evaluate"]) < 1e-3 for v in top1s.values())
    zoo_preds = []
    evaluate(model, batches, device, domains, channels_last=True, predictions=zoo_preds)
    with torch.inference_mode():
        oc_preds = [(100. * clip(image=b[0])[0] @ classifier).topk(1, 1)[1][:, 0] for b in batches]
        timm_preds = [model(b[0]).topk(1, 1)[1][:, 0] for b in batches]
    zoo_pred = torch.cat([p[:, 2] for p in zoo_preds])
    same_pred = all(torch.equal(zoo_pred, torch.cat(p)) for p in (readme_preds, oc_preds, timm_preds))
    print("top1: " + ", ".join(f"{k} {v:.3f}" for k, v in top1s.items()) + f"; same prediction on every image: {same_pred}")

    fns = {"open_clip_train_zero_shot": open_clip_train_loop, "timm_validate_loop": timm_validate_loop,
           "zoo_evaluate": zoo_loop, "zoo_evaluate_no_channels_last": zoo_loop_no_channels_last,
           "open_clip_readme_loop": readme_loop}
    if args.arch == "small":  # where validate.py's time goes: loader alone, model alone (above), both
        decode_loader = mini_loader(args.batch_size, size, args.workers, decode_only_=True)
        full_loader = mini_loader(args.batch_size, size, args.workers)
        fns["loader_decode_only"] = lambda: sum(1 for _ in decode_loader)
        fns["loader_decode_transform"] = lambda: sum(1 for _ in full_loader)
        fns["end_to_end"] = lambda: evaluate(model, full_loader, device, domains, channels_last=True)
    times = C.interleaved(fns, repeats=args.repeats, warmup=0)
    med = {k: t["median_s"] for k, t in times.items()}
    rows = [{"arch": arch, "classes": len(classes), "images": num_images, "batch": args.batch_size, "path": k,
             "images_per_s": num_images / t["median_s"], "best_images_per_s": num_images / t["min_s"],
             "zoo_speedup_vs_this": t["median_s"] / med["zoo_evaluate"],
             "zoo_speedup_vs_this_min": t["min_s"] / times["zoo_evaluate"]["min_s"],
             "share_of_end_to_end": t["median_s"] / med["end_to_end"] if "end_to_end" in med else None,
             "load_1m": C.load_avg()[0]} for k, t in times.items()]
    print(C.table(rows))
    speedups = {k: med[k] / med["zoo_evaluate"] for k in ("open_clip_train_zero_shot", "timm_validate_loop",
                                                         "open_clip_readme_loop")}
    for k in ("open_clip_train_zero_shot", "timm_validate_loop"):
        print(f"goal: zoo_evaluate >= 1.0x {k}: {speedups[k]:.2f}x {'OK' if speedups[k] >= 1.0 else 'MISSED'}")
    C.save(args.out_name, info, {"rows": rows, "top1": top1s, "top1_agree": agree,
                                 "same_predictions_every_image": same_pred, "workers": args.workers,
                                 "goal": "zoo evaluate >= 1.0x images/s of open_clip_train's zero-shot loop and "
                                         "of timm's validate.py loop (medians, same run)",
                                 "speedups": speedups})


if __name__ == "__main__":
    main()
