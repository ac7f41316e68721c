"""Command line for :func:`clipood_zoo.export_open_clip`: ``python -m clipood_zoo.export NAME OUT``.

Examples::

    python -m clipood_zoo.export clip_vitt_emoji --pretrained clip_vitt_emoji_open_clip
    python -m clipood_zoo.export clipood_vitb16_pacs_art --clip-pretrained openai \\
        --checkpoint output/train/clipood_vitb16_pacs_art-clipood-art_painting pacs_art_open_clip
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .errors import ClipoodError
from .open_clip_export import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, export_open_clip
from .registry import create_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipood_zoo.export",
        description="Write a zoo model as an open_clip CLIP folder: "
                    "open_clip.create_model_and_transforms('local-dir:OUT').")
    parser.add_argument("model", help="zoo model name (clipood_zoo.list_models())")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--pretrained", action="store_true", help="the model's registered weights")
    parser.add_argument("--checkpoint", default=None,
                        help="fine-tuned weights (a safetensors file or save_pretrained folder)")
    parser.add_argument("--clip-pretrained", default=None,
                        help="open_clip tag of the CLIP whose text tower the head was embedded with (e.g. openai); "
                             "default: the architecture's own text weights (the bundled MiniLM for the EmojiDG family)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint,
                             clip_pretrained=args.clip_pretrained, with_text_tower=args.clip_pretrained is None)
        out = export_open_clip(model, args.out)
    except ClipoodError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {out / OPEN_CLIP_CONFIG} and {out / OPEN_CLIP_WEIGHTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
