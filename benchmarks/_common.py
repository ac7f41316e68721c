"""Shared helpers for the benchmark scripts: machine info, timing, the small arch, tables, JSON output.

Every script measures a candidate against a baseline *in the same process*, interleaving their
repeats, and reports the ratio: absolute numbers on a shared 2-core machine move with the load,
ratios of interleaved measurements move much less. The load average is recorded before and after.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
for _path in (ROOT, ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from emojidg.paths import repo_relative  # noqa: E402  results record repository paths as a clone has them

# The shipped small family's image tower (clipood_zoo/model_configs/ViT-T-8-40-MiniLM.json: ViT width 192,
# 6 layers, patch 8, 40 px, embed 384),
# with a small standard open_clip text tower so that a full open_clip model (encode_text) can be built
# without the MiniLM wheel. Registered under our own name so it never clashes with configs others edit.
SMALL_ARCH = "bench-ViT-T-8-40"
SMALL_CFG = {
    "embed_dim": 384,
    "vision_cfg": {"image_size": 40, "layers": 6, "width": 192, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 4},
}
MINI_DATA = ROOT / "datasets" / "emojidg-mini"


def register_small_arch() -> str:
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS
    _MODEL_CONFIGS.setdefault(SMALL_ARCH, json.loads(json.dumps(SMALL_CFG)))
    assert open_clip.get_model_config(SMALL_ARCH) is not None
    return SMALL_ARCH


def load_avg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> Dict[str, object]:
    info: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": load_avg(),
    }
    try:
        import open_clip
        import timm
        info["open_clip"], info["timm"] = open_clip.__version__, timm.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: Optional[torch.device] = None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1, inner: int = 1,
                device: Optional[torch.device] = None) -> Dict[str, Dict[str, float]]:
    """Seconds per call of each fn: ``warmup`` untimed rounds, then ``repeats`` rounds, each running every fn
    ``inner`` times in turn (rotating the order), so load changes hit all candidates alike. Median and min."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            sync(device)
            times[n].append((time.perf_counter() - t0) / inner)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t)} for n, t in times.items()}


def table(rows: Sequence[Dict[str, object]], columns: Optional[Sequence[str]] = None) -> str:
    columns = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def save(name: str, info: Dict[str, object], payload: Dict[str, object], out_dir: Optional[Path] = None) -> Path:
    info = {**info, "load_avg_end": load_avg()}
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": info, **payload}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\nload average start {info['load_avg_start']} end {info['load_avg_end']}; wrote {path}")
    return path


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")
