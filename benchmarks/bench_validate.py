#!/usr/bin/env python3
"""validate.py's evaluation path vs the zero-shot loop a user writes from open_clip's README, same images.

    python benchmarks/bench_validate.py [--arch small|ViT-B-16] [--batch-size 256] [--repeats 3]

* ``zoo_evaluate``: ``clipood_zoo.evaluate.evaluate`` on a ClipoodClassifier whose class text embeddings
  are a cached [C, D] buffer, channels-last, counts kept on the device (what validate.py runs).
* ``open_clip_readme_loop``: per batch ``model.encode_image(images)`` and ``model.encode_text(text)`` of all
  tokenized class prompts (open_clip's README puts both inside the loop), normalise, ``100 * f @ t.T``,
  softmax, argmax, ``.item()`` of the correct count.

Both see the same pre-decoded batches (from datasets/emojidg-mini for the small arch, its 1776 images
and 444 classes; random tensors for ViT-B-16), so the ratio is the model path alone; the loader is
bench_data.py's subject. The two share image-tower weights and must agree on every prediction.
Goal: zoo_evaluate >= 1.5x the README loop in images/s.
"""
from __future__ import annotations

import argparse

import open_clip
import torch
import torch.nn.functional as F

import _common as C
from clipood_zoo.evaluate import evaluate
from clipood_zoo.models.classifier import ClipoodClassifier


def mini_batches(batch_size: int, size: int):
    from timm.data import create_transform
    from clipood_zoo.data import create_loader, read_dataset_info
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    info = read_dataset_info(C.MINI_DATA)
    transform = create_transform((3, size, size), interpolation="bicubic", crop_pct=1.0,
                                 mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
    loader = create_loader(C.MINI_DATA, "val", transform=transform, batch_size=batch_size, is_training=False)
    return [b for b in loader], list(info.classes), list(info.domains)


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

    correct = readme_loop()
    zoo_loop()
    agree = abs(zoo_result["top1"] - round(100.0 * correct / num_images, 3)) < 1e-6
    # an exact per-image check on the first batch (same weights, same images -> same argmax)
    with torch.no_grad():
        zoo_pred = model(batches[0][0]).argmax(-1)
    same_pred = bool(torch.equal(zoo_pred, readme_preds[0]))
    print(f"top1 README loop {100.0 * correct / num_images:.3f}, zoo evaluate {zoo_result['top1']:.3f}; "
          f"same first-batch predictions: {same_pred}")

    times = C.interleaved({"open_clip_readme_loop": readme_loop, "zoo_evaluate": zoo_loop,
                           "zoo_evaluate_no_channels_last": zoo_loop_no_channels_last},
                          repeats=args.repeats, warmup=0)
    base = times["open_clip_readme_loop"]["median_s"]
    rows = [{"arch": arch, "classes": len(classes), "images": num_images, "batch": args.batch_size, "path": k,
             "images_per_s": num_images / t["median_s"], "best_images_per_s": num_images / t["min_s"],
             "speedup_vs_readme": base / t["median_s"], "load_1m": C.load_avg()[0]} for k, t in times.items()]
    print(C.table(rows))
    speedup = rows[1]["speedup_vs_readme"]
    print(f"goal: zoo_evaluate >= 1.5x the README loop: {speedup:.2f}x {'OK' if speedup >= 1.5 else 'MISSED'}")
    C.save(args.out_name, info, {"rows": rows, "top1_agree": agree, "same_first_batch_predictions": same_pred,
                                 "goal": "zoo evaluate >= 1.5x images/s of the open_clip README loop",
                                 "speedup": speedup})


if __name__ == "__main__":
    main()
