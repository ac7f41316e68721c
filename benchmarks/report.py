#!/usr/bin/env python3
"""Fill benchmarks/README.md's results section from benchmarks/results/*.json.

    python benchmarks/report.py            # rewrites the text between the results markers
    python benchmarks/report.py --print    # prints it instead
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common as C

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def load(name):
    path = C.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(d) -> str:
    m = d["machine"]
    gpu = f", GPU {m['card']}" if m.get("card") and "cpu" not in str(m.get("card")) else ""
    return (f"_{m['date']}, {m['cpu_model']} ({m['cpu_cores']} cores, torch threads {m['torch_threads']}){gpu}, "
            f"torch {m['torch']}; load average (1/5/15 min) {m['load_avg_start']} at start, "
            f"{m['load_avg_end']} at end._")


def section(title, d, rows, columns) -> list:
    if d is None:
        return [f"### {title}", "", "_not run yet_", ""]
    return [f"### {title}", "", machine_line(d), "", C.table(rows, columns), ""]


def render() -> str:
    out = []
    d = load("bma")
    out += section("ModelBma.update vs timm ModelEmaV3.update (bench_bma.py)", d, d and d["rows"],
                   ["model", "params_M", "update", "median_ms", "min_ms", "ratio_vs_ema", "ratio_min_vs_ema",
                    "host_overhead_ms", "host_ratio_vs_ema", "load_1m"])
    d = load("validate")
    out += section("validate.py's path vs open_clip_train's zero-shot loop, timm's validate loop and the README "
                   "loop; where validate.py's time goes (bench_validate.py)", d, d and d["rows"],
                   ["arch", "classes", "images", "batch", "path", "images_per_s", "best_images_per_s",
                    "zoo_speedup_vs_this", "zoo_speedup_vs_this_min", "share_of_end_to_end", "load_1m"])
    d = load("train_step")
    out += section("CLIPood step vs ERM step (bench_train_step.py)", d, d and d["rows"],
                   ["arch", "batch", "step", "images_per_s", "median_ms", "min_ms", "ratio_vs_erm",
                    "ratio_min_vs_erm", "peak_mem_growth_mb", "load_1m"])
    d = load("data")
    out += section("Loader vs training step (bench_data.py)", d, d and d["rows"],
                   ["what", "workers", "images_per_s", "best_images_per_s", "first_batch_s", "ratio_vs_model",
                    "load_1m"])
    d = load("scaling")
    out += section("Step time vs number of classes (bench_scaling.py)", d, d and d["rows"],
                   ["classes", "D", "batch", "mms_loss+bwd_ms", "mms_min_ms", "ce_loss+bwd_ms", "ce_min_ms",
                    "mms/ce_min", "naive_CxC_margin+bwd_ms", "naive/mms", "naive_CxC_MB", "model_step_ms",
                    "mms_share_of_step", "load_1m"])
    d = load("side_by_side")
    out += section("Study runs side by side vs one at a time (bench_side_by_side.py)", d, d and d["rows"],
                   ["mode", "runs", "steps", "median_s", "min_s", "runs_per_hour", "speedup_vs_one_at_a_time",
                    "speedup_min", "load_1m"])
    d = load("gpu")
    if d is None:
        out += ["### GPU (gpu.sh)", "", "_not run yet: no GPU was lent to the task that wrote these scripts "
                "(the script was dry-run on CPU: `python benchmarks/bench_gpu.py --dry-run`)._", ""]
    else:
        out += section("GPU train step (gpu.sh)", d, d["train"],
                       ["variant", "train_images_per_s", "step_ms", "step_ratio_vs_erm", "average_update_ms",
                        "average_update_share", "peak_mem_mb", "host_syncs_per_step", "achieved_tflops",
                        "mfu_vs_card_peak", "mfu_vs_measured_matmul"])
        out += [C.table(d["validate"]), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true")
    args = p.parse_args()
    text = render()
    if args.print:
        print(text)
        return
    readme = README.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}{END}{tail}")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
