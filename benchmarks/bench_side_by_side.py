#!/usr/bin/env python3
"""Study runs side by side (`run_benchmark.py --jobs N`) against one at a time with all the cores.

    python benchmarks/bench_side_by_side.py [--data-dir data/emojidg_v2] [--jobs 2] [--steps 150] [--rounds 2]

The unit is what the EmojiDG study runs: a `train.py` subprocess (ERM, `clip_vitt_emoji` from its shipped
weights, batch 64, one style held out, interpreter start and data loading included). Per round it times,
in alternating order, the same N runs

* ``one_at_a_time``: one after another, torch's default threads (one per core): what a user runs without
  ``--jobs``, and the baseline;
* ``side_by_side``: all N at once through ``sweep.run_side_by_side`` with ``sweep.threads_env(N)``
  (``OMP_NUM_THREADS`` = cores / N), the runner's own path.

The ratio is runs per hour side by side over one at a time. Nothing else should run meanwhile: the two
modes use the cores differently, so a background job skews them unequally.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from clipood_zoo import sweep


def train_cmd(data_dir: Path, out: Path, name: str, steps: int) -> list:
    return [sys.executable, str(C.ROOT / "train.py"), "--model", "clip_vitt_emoji", "--pretrained",
            "--data-dir", str(data_dir), "--holdout", "line", "--train-classes", "base", "--steps", str(steps),
            "-b", "64", "--lr", "1e-4", "--warmup-steps", str(steps // 10), "--weight-decay", "0.1",
            "--eval-interval", "1000", "--log-interval", str(steps), "--method", "erm", "--workers", "2",
            "--seed", "0", "--output", str(out), "--experiment", name]


def timed(mode: str, cmds: list, logs: list, jobs: int) -> float:
    env = sweep.threads_env(jobs) if mode == "side_by_side" else None
    tasks = [lambda c=c, log=log: _check(sweep.run_subprocess(c, log=log, env=env), log) for c, log in zip(cmds, logs)]
    start = time.perf_counter()
    sweep.run_side_by_side(tasks, jobs if mode == "side_by_side" else 1)
    return time.perf_counter() - start


def _check(returncode: int, log: Path) -> None:
    if returncode != 0:
        raise RuntimeError(f"a train.py run exited with {returncode}; its output: {log}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="EmojiDG shards with a train split (default: data/emojidg_v2, else data/emojidg)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out-name", default="side_by_side")
    args = p.parse_args()
    data = args.data_dir or next((d for d in (C.ROOT / "data" / "emojidg_v2", C.ROOT / "data" / "emojidg")
                                  if (d / "_info.json").is_file()), None)
    if data is None or not (data / "_info.json").is_file():
        p.error("no EmojiDG shards with a train split: build them (docs/emojidg/v2_plan.md, 'How to run v2') or "
                "pass --data-dir")
    info = {**C.machine_info(), "data": C.repo_relative(data)}
    seconds = {"one_at_a_time": [], "side_by_side": []}
    with tempfile.TemporaryDirectory(prefix="bench_side_by_side_") as tmp:
        for r in range(args.rounds):
            for mode in (("one_at_a_time", "side_by_side") if r % 2 == 0 else ("side_by_side", "one_at_a_time")):
                names = [f"r{r}-{mode}-{i}" for i in range(args.jobs)]
                cmds = [train_cmd(data, Path(tmp) / "runs", n, args.steps) for n in names]
                s = timed(mode, cmds, [Path(tmp) / f"{n}.log" for n in names], args.jobs)
                seconds[mode].append(s)
                print(f"round {r} {mode}: {args.jobs} runs in {s:.1f} s", flush=True)
    base = statistics.median(seconds["one_at_a_time"])
    rows = [{"mode": mode, "runs": args.jobs, "steps": args.steps, "median_s": statistics.median(v), "min_s": min(v),
             "runs_per_hour": 3600 * args.jobs / statistics.median(v),
             "speedup_vs_one_at_a_time": base / statistics.median(v),
             "speedup_min": min(seconds["one_at_a_time"]) / min(v), "load_1m": info["load_avg_start"][0]}
            for mode, v in seconds.items()]
    print(C.table(rows))
    C.save(args.out_name, info, {"rows": rows, "seconds": seconds})


if __name__ == "__main__":
    main()
