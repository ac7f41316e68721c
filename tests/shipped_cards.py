"""What a shipped fine-tune's model card recorded on the committed mini subset (read by the tests that re-score it).

tools/emojidg/run_benchmark.py --ship scores each fine-tune, as the fp16 file it ships, on
datasets/emojidg-mini's held-out style and writes ``- mini_top1: X`` into the card; the card's own results
are on the full held-out split, which CI does not have.
"""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def recorded_mini_top1(name: str) -> float:
    """The ``mini_top1`` line of ``weights/<name>/README.md``; AssertionError naming the card if it has none."""
    card = REPO / "weights" / name / "README.md"
    found = re.search(r"^- mini_top1: ([\d.]+)$", card.read_text(), re.M)
    assert found, f"{card} has no '- mini_top1:' line; re-ship it with tools/emojidg/run_benchmark.py --ship"
    return float(found.group(1))
