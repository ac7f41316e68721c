"""One command per table of the paper: train every (held-out domain | dataset, seed), validate it, and
lay the rows out with ``tools/paper_tables.py``.

``python -m clipood_zoo.data.protocols run {domainbed DATASET | imagenet | b2n DATASET} --data ... --output ...``

Each run is a ``train.py`` then a ``validate.py`` (or ``validate-imagenet``) subprocess with an explicit
``--experiment`` named after the entry, held-out domain and seed, so seeds never share a run folder.
Layout under ``--output``::

    runs/<name>/            train.py's run folder (exported model, checkpoint)
    results/<name>.json     the validate rows of that run
    table<N>_<dataset>.csv  every row of the sweep, with dataset, heldout, seed and method added
    table<N>_<dataset>.md   tools/paper_tables.py's table of that file

Resumable: a run whose result file exists is done and skipped; a run folder with a checkpoint is
continued with ``--resume``; one with an exported model and no checkpoint (a finished run that dropped
it) is only validated. ``--dry-run`` prints the commands of what is left.

The recipe (batch size, lr, steps, lambda, tau, BMA beta, weight decay) is the zoo entry's
(``get_pretrained_cfg(name).recipe``); ``--steps``/``--batch-size``/``--lr`` override it, ``--model`` trains
another architecture with the same recipe (for smoke runs: a small open_clip config, random init with
``--clip-pretrained none``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cli_utils import format_results
from .data.catalog import BASE2NEW as DATASETS
from .data.catalog import DOMAINBED
from .errors import ConfigError, TrainingError
from .fileio import write_text_atomic
from .registry import get_pretrained_cfg


REPO = Path(__file__).resolve().parent.parent
EVAL_SPLITS = {"val": "the held-out domain's 20% 'val' split (DomainBed's 'out', what CLIPood's converter scores)",
               "train": "the held-out domain's 80% 'train' split (DomainBed's 'in', what DomainBed's tables report)"}


@dataclasses.dataclass
class SweepOptions:
    """What every run of a sweep shares; None means the entry's recipe (or the script's default)."""

    data: Path
    output: Path
    seeds: Sequence[int]
    method: str = "clipood"
    model: Optional[str] = None  # another architecture than the entry's, for smoke runs
    model_config: Optional[str] = None
    clip_pretrained: Optional[str] = None  # None: the recipe's ('openai'); 'none': random init
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    eval_split: str = "val"
    workers: Optional[int] = None
    device: Optional[str] = None
    train_args: Sequence[str] = ()
    python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class Job:
    """One (entry, held-out domain or dataset, seed): its train and validate commands and where they write."""

    name: str
    run_dir: Path
    result: Path
    train: List[str]
    validate: List[str]
    fields: Dict[str, Any]  # added to every row of the result


def _script(name: str) -> str:
    path = REPO / name
    if not path.is_file():
        raise ConfigError(f"{path} not found: sweeps run the repository's {name}; run them from a clone of clipood-zoo.")
    return str(path)


def _common(opts: SweepOptions) -> List[str]:
    """Flags train.py and validate.py both take."""
    out: List[str] = []
    for flag, value in (("--model-config", opts.model_config), ("--workers", opts.workers), ("--device", opts.device)):
        if value is not None:
            out += [flag, str(value)]
    return out


def _train_cmd(opts: SweepOptions, entry: str, name: str, data_dir: Path, seed: int, extra: Sequence[str]) -> List[str]:
    recipe = get_pretrained_cfg(entry).recipe
    clip = opts.clip_pretrained if opts.clip_pretrained is not None else recipe.get("clip_pretrained")
    cmd = [opts.python, _script("train.py"), "--model", opts.model or entry, "--data-dir", str(data_dir),
           "--method", opts.method, "-b", str(opts.batch_size or recipe["batch_size"]), "--lr", str(opts.lr or recipe["lr"]),
           "--steps", str(opts.steps or recipe["steps"]), "--margin-lambda", str(recipe["margin_lambda"]),
           "--temperature", str(recipe["temperature"]), "--bma-beta", str(recipe["bma_beta"]),
           "--weight-decay", str(recipe["weight_decay"]), "--seed", str(seed),
           "--output", str(opts.output / "runs"), "--experiment", name, *extra, *_common(opts)]
    if clip and clip != "none":
        cmd += ["--clip-pretrained", clip]
    return cmd + list(opts.train_args)


def _run_name(opts: SweepOptions, entry: str, what: str, seed: int) -> str:
    model = opts.model or entry
    tag = entry if opts.model is None else f"{model}-{what}"
    return f"{tag}-{opts.method}-s{seed}"


def domainbed_jobs(dataset: str, opts: SweepOptions) -> List[Job]:
    """Table 1: every held-out domain of ``dataset`` x every seed, scored on ``opts.eval_split``."""
    if dataset not in DOMAINBED:
        raise ConfigError(f"unknown DomainBed dataset {dataset!r}; one of {', '.join(DOMAINBED)}")
    if opts.eval_split not in EVAL_SPLITS:
        raise ConfigError(f"--eval-split must be one of {', '.join(EVAL_SPLITS)}, got {opts.eval_split!r}")
    jobs = []
    for seed in opts.seeds:
        for domain in DOMAINBED[dataset].domains:
            entry = f"clipood_vitb16_{dataset}_{domain.slug}"
            name = _run_name(opts, entry, f"{dataset}_{domain.slug}", seed)
            run_dir, result = opts.output / "runs" / name, opts.output / "results" / f"{name}.json"
            train = _train_cmd(opts, entry, name, opts.data, seed,
                               ["--holdout", domain.folder, "--eval-split", opts.eval_split])
            validate = [opts.python, _script("validate.py"), "--model", opts.model or entry, "--checkpoint", str(run_dir),
                        "--data-dir", str(opts.data), "--domains", domain.folder, "--split", opts.eval_split,
                        "--results-file", str(result), *_common(opts)]
            jobs.append(Job(name, run_dir, result, train, validate,
                            {"dataset": dataset, "heldout": domain.slug, "seed": seed, "method": opts.method,
                             "eval_split": opts.eval_split}))
    return jobs


def b2n_jobs(dataset: str, opts: SweepOptions) -> List[Job]:
    """Table 3: base classes of ``<data>/seed<k>`` trained, base and new scored on its ``test`` split."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown base-to-new dataset {dataset!r}; one of {', '.join(DATASETS)}")
    entry = f"clipood_vitb16_b2n_{dataset}"
    jobs = []
    for seed in opts.seeds:
        data_dir = opts.data / f"seed{seed}"
        name = _run_name(opts, entry, f"b2n_{dataset}", seed)
        run_dir, result = opts.output / "runs" / name, opts.output / "results" / f"{name}.json"
        train = _train_cmd(opts, entry, name, data_dir, seed, ["--train-classes", "base"])
        validate = [opts.python, _script("validate.py"), "--model", opts.model or entry, "--checkpoint", str(run_dir),
                    "--data-dir", str(data_dir), "--split", "test", "--results-file", str(result), *_common(opts)]
        jobs.append(Job(name, run_dir, result, train, validate,
                        {"dataset": dataset, "seed": seed, "method": opts.method}))
    return jobs


def imagenet_jobs(shifts: Sequence[Path], opts: SweepOptions) -> List[Job]:
    """Table 2: 16-shot ``<data>/seed<k>`` trained, scored on its ``test`` split (ImageNet val) and the shifts."""
    entry = "clipood_vitb16_imagenet"
    jobs = []
    for seed in opts.seeds:
        data_dir = opts.data / f"seed{seed}"
        name = _run_name(opts, entry, "imagenet", seed)
        run_dir, result = opts.output / "runs" / name, opts.output / "results" / f"{name}.json"
        train = _train_cmd(opts, entry, name, data_dir, seed, [])
        validate = [opts.python, "-m", "clipood_zoo.data.protocols", "validate-imagenet", "--model", opts.model or entry,
                    "--checkpoint", str(run_dir), "--data-dir", str(data_dir), *map(str, shifts),
                    "--results-file", str(result), *_common(opts)]
        jobs.append(Job(name, run_dir, result, train, validate, {"seed": seed, "method": opts.method}))
    return jobs


def pending_commands(job: Job) -> List[List[str]]:
    """What is left of ``job``: nothing once its result exists; else (resumed) training, then validation."""
    if job.result.is_file():
        return []
    if (job.run_dir / "checkpoint.pt").is_file():
        return [job.train + ["--resume", str(job.run_dir)], job.validate]
    if (job.run_dir / "model.safetensors").is_file():
        return [job.validate]
    return [job.train, job.validate]


def run_subprocess(cmd: Sequence[str], log: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> int:
    """Run one command from the repository root; its exit status. With ``log`` its output (stdout and stderr) is
    appended to that file after the command line, so that runs going side by side do not interleave their lines
    and progress bars on one console; ``env`` replaces the environment (side-by-side runs share the cores)."""
    if log is None:
        return subprocess.run(list(cmd), cwd=REPO, env=env).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.run(list(cmd), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


_SAY_LOCK = threading.Lock()


def say(line: str, file: Optional[Any] = None) -> None:
    """Write ``line`` and its newline to ``file`` (stdout by default) in one write, flushed. Runs side by side
    report from their own threads, and ``print`` writes the text and the newline separately: two reports could
    join on one line of the runner's log."""
    stream = sys.stdout if file is None else file
    with _SAY_LOCK:
        stream.write(f"{line}\n")
        stream.flush()


def threads_env(jobs: int) -> Dict[str, str]:
    """This process's environment with ``OMP_NUM_THREADS`` = the cores it may use shared out among ``jobs`` runs
    (at least one each), unless the user set it: torch would start a thread per core in every run, and ``jobs``
    runs of that many threads on the same cores slow each other down."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": str(max(1, cores // jobs)), **os.environ}


def run_side_by_side(tasks: Sequence[Callable[[], None]], jobs: int) -> None:
    """Run ``tasks`` (each a run's commands) ``jobs`` at a time; with one, in order. Small models leave a GPU, or
    CPU cores, idle with one run at a time. A task that fails, or an interrupt (Ctrl-C), stops the start of the
    rest; those already running finish (every run stays resumable). Every failure is printed as it happens;
    the first is raised (the interrupt, if there was one)."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if jobs == 1:
        for task in tasks:
            task()
        return
    left, errors, lock, stop = iter(tasks), [], threading.Lock(), threading.Event()

    def worker() -> None:
        while True:
            with lock:
                task = None if errors or stop.is_set() else next(left, None)
            if task is None:
                return
            try:
                task()
            except BaseException as e:  # noqa: BLE001 - SystemExit too: raised in the caller's thread below
                say(f"# failed: {e}", file=sys.stderr)
                with lock:
                    errors.append(e)

    threads = [threading.Thread(target=worker, name=f"sweep-job-{i}") for i in range(min(jobs, len(tasks)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # an interrupt reaches this thread only: no worker may start another run
        stop.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]


def run_sweep(jobs: Sequence[Job], table: int, label: str, opts: SweepOptions, dry_run: bool = False,
              runner: Optional[Callable[[Sequence[str]], int]] = None) -> Optional[str]:
    """Run what is left of ``jobs``, then write the sweep's rows and its table; return the table (markdown).

    With ``dry_run`` only print the commands (and return None). ``runner`` runs one command line
    (default :func:`run_subprocess`).
    """
    runner = runner or run_subprocess
    for job in jobs:
        commands = pending_commands(job)
        if not commands:
            say(f"# done: {job.name} ({job.result})")
        run_commands(commands, job, dry_run, runner)
    stem = opts.output / f"table{table}_{label}"
    summary = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    tables_cmd = [opts.python, _script("tools/paper_tables.py"), f"{opts.method}={summary[0]}", "--table", str(table),
                  "--output", str(summary[1])]
    if dry_run:
        print(f"# then: the rows of every run into {summary[0]}", flush=True)
        print(shlex.join(tables_cmd), flush=True)
        return None
    rows = [{**row, **job.fields} for job in jobs for row in json.loads(job.result.read_text(encoding="utf-8"))]
    write_text_atomic(summary[0], format_results(rows, "csv"))
    _check(runner(tables_cmd), tables_cmd, None)
    return summary[1].read_text(encoding="utf-8")


def run_commands(commands: Sequence[Sequence[str]], job: Job, dry_run: bool,
                 runner: Callable[[Sequence[str]], int]) -> List[float]:
    """Print each of ``job``'s commands and, unless ``dry_run``, run it; a failure stops with :func:`_check`'s error.
    Returns the wall-clock seconds of each command run (none with ``dry_run``): what a time budget learns from."""
    seconds = []
    for cmd in commands:
        say(shlex.join(cmd))
        if not dry_run:
            started = time.monotonic()
            returncode = runner(cmd)
            seconds.append(time.monotonic() - started)
            _check(returncode, cmd, job)
    return seconds


def _check(returncode: int, cmd: Sequence[str], job: Optional[Job]) -> None:
    """A failed command stops the sweep with the command and how to carry on (finished runs are kept)."""
    if returncode != 0:
        where = f" for {job.name}" if job else ""
        raise TrainingError(f"command{where} exited with {returncode}: {shlex.join(cmd)}\nFix the cause and "
                            "rerun the same sweep: finished runs are skipped and interrupted ones resumed.")
