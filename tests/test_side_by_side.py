"""Runs side by side (`run_benchmark.py --jobs N`): clipood_zoo.sweep's pool, per-run logs and thread shares."""
import os
import shlex
import sys
import threading
from pathlib import Path

import pytest

from clipood_zoo import sweep
from clipood_zoo.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from emojidg import run_benchmark as rb  # noqa: E402

# the cores this process may use (a container's CPU set, not the host's), as sweep.threads_env counts them
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_jobs_run_at_the_same_time_and_one_job_keeps_the_order():
    meet = threading.Barrier(2, timeout=120)  # broken (an error) unless both tasks are running at once
    ran = []
    sweep.run_side_by_side([lambda: ran.append(meet.wait()), lambda: ran.append(meet.wait())], jobs=2)
    assert sorted(ran) == [0, 1]
    order = []
    sweep.run_side_by_side([lambda i=i: order.append(i) for i in range(5)], jobs=1)
    assert order == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="--jobs must be >= 1, got 0"):
        sweep.run_side_by_side([], jobs=0)


def test_a_failure_lets_running_jobs_finish_starts_no_more_and_is_raised():
    meet = threading.Barrier(2, timeout=120)
    failing = {}
    done = []
    boom = RuntimeError("run a failed")

    def fail():
        failing["thread"] = threading.current_thread()
        meet.wait()
        raise boom

    def running():
        meet.wait()
        failing["thread"].join(timeout=120)  # its thread ends only once the failure is recorded
        done.append("running")

    with pytest.raises(RuntimeError) as exc:
        sweep.run_side_by_side([fail, running, lambda: done.append("later 1"), lambda: done.append("later 2")], 2)
    assert exc.value is boom and done == ["running"]
    done.clear()
    with pytest.raises(RuntimeError):  # one at a time: nothing after the failure starts
        sweep.run_side_by_side([lambda: done.append("first"), lambda: (_ for _ in ()).throw(boom),
                                lambda: done.append("after")], 1)
    assert done == ["first"]


def test_a_logged_subprocess_writes_its_command_and_output_and_gets_its_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd = [sys.executable, "-c", "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); "
                                 "print('to stderr', file=sys.stderr); sys.exit(3)"]
    log = tmp_path / "logs" / "run.log"
    assert sweep.run_subprocess(cmd, log=log, env=sweep.threads_env(2)) == 3
    assert sweep.run_subprocess(cmd, log=log, env=sweep.threads_env(10 ** 6)) == 3  # appended, at least 1 thread
    assert log.read_text().splitlines() == [f"$ {shlex.join(cmd)}", f"threads {max(1, CORES // 2)}",
                                            "to stderr", f"$ {shlex.join(cmd)}", "threads 1", "to stderr"]
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's setting wins
    assert sweep.threads_env(2)["OMP_NUM_THREADS"] == "7"


def test_the_study_runs_side_by_side_with_a_log_and_a_thread_share_per_run(tmp_path, monkeypatch):
    """run_phase with --jobs 2 and the default runner: every evaluation goes through sweep.run_subprocess with
    its own log under OUT/logs and OMP_NUM_THREADS = cores / 2, two at a time."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    meet = threading.Barrier(2, timeout=120)
    calls = []

    def fake_run_subprocess(cmd, log=None, env=None):
        calls.append((log, env["OMP_NUM_THREADS"]))
        meet.wait()  # both evaluations are running at once
        result = Path(cmd[cmd.index("--results-file") + 1])
        (Path(rb.REPO) / result if not result.is_absolute() else result).write_text("[]")
        return 0

    monkeypatch.setattr(sweep, "run_subprocess", fake_run_subprocess)
    out = tmp_path / "study"
    (out / "results").mkdir(parents=True)
    opts = rb.StudyOptions(tmp_path / "data", out, "test", jobs=2)
    rb.run_phase("grid", [], opts, False, None, [rb.zeroshot_job(d, opts) for d in ("3d", "line")])
    assert sorted(calls) == [(out / "logs" / f"zeroshot-{d}.log", str(max(1, CORES // 2))) for d in ("3d", "line")]
    assert all((out / "results" / f"zeroshot-{d}.json").is_file() for d in ("3d", "line"))


def test_a_failed_run_side_by_side_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_subprocess", lambda cmd, log=None, env=None: 1)
    out = tmp_path / "study"
    opts = rb.StudyOptions(tmp_path / "data", out, "test", jobs=2)
    with pytest.raises(rb.TrainingError) as exc:
        rb.run_phase("grid", [], opts, False, None, [rb.zeroshot_job("3d", opts)])
    assert str(exc.value).startswith("command for zeroshot-3d exited with 1: ")
    assert str(exc.value).endswith(f"\nIts output: {out / 'logs' / 'zeroshot-3d.log'}")


def test_jobs_below_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        rb.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--jobs", "0"])
    assert exc.value.code == 2 and "error: --jobs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_system_exit_in_a_job_is_raised_not_lost():
    """threading drops a SystemExit raised in a thread without a word: the pool must carry it to the caller."""
    with pytest.raises(SystemExit, match="run b failed"):
        sweep.run_side_by_side([lambda: None, lambda: (_ for _ in ()).throw(SystemExit("run b failed"))], 2)


def test_an_interrupt_in_the_callers_thread_starts_no_more_jobs(monkeypatch):
    """Ctrl-C reaches the caller's thread only (in join). Here it comes while both workers run a job: those jobs
    finish, the third never starts, and the interrupt is raised."""
    started, release, real_join = [], threading.Event(), threading.Thread.join

    interrupted = []

    def join(self, timeout=None):
        if self.name.startswith("sweep-job-") and not interrupted:  # the caller's first join
            while len(started) < 2:  # interrupted once both jobs run
                release.wait(0.01)
            interrupted.append(self)
            raise KeyboardInterrupt
        release.set()  # then the caller waits for the running jobs: let them end
        return real_join(self, timeout)

    def job(name):
        started.append(name)
        release.wait(120)

    monkeypatch.setattr(threading.Thread, "join", join)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_side_by_side([lambda: job("a"), lambda: job("b"), lambda: started.append("later")], 2)
    assert sorted(started) == ["a", "b"]


def test_the_umask_is_read_without_being_changed(monkeypatch, tmp_path):
    """Records are written from the runs' threads: reading the umask by setting it (os.umask(0), then back) from
    two threads at once can leave it at 0, and every later file world-writable. Where /proc shows it, it is read."""
    from clipood_zoo import fileio

    old = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called while writing a file")

        status = Path("/proc/self/status")
        if status.is_file() and "\nUmask:" in status.read_text():  # Linux >= 4.7 shows it (some sandboxes do not)
            monkeypatch.setattr(os, "umask", no_umask)
        fileio.write_text_atomic(tmp_path / "record.json", "{}")
        assert fileio._umask() == 0o027 and (tmp_path / "record.json").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)


class _Writes:
    """A stream that keeps each write call apart: a report split over two calls can be joined by another thread's."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


def test_reports_from_runs_side_by_side_are_whole_lines_in_one_write(tmp_path, monkeypatch):
    out, err = _Writes(), _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    job = sweep.Job("a", tmp_path / "a", tmp_path / "a.json", ["train.py", "--x"], ["validate.py"], {})
    sweep.run_commands([job.train, job.validate], job, dry_run=True, runner=None)
    assert out.writes == ["train.py --x\n", "validate.py\n"]
    out.writes.clear()
    with pytest.raises(RuntimeError):
        sweep.run_side_by_side([lambda: None, lambda: (_ for _ in ()).throw(RuntimeError("boom"))], 2)
    assert out.writes == [] and err.writes == ["# failed: boom\n"]
    out.writes.clear()
    meet = threading.Barrier(2, timeout=120)

    def report(name):
        meet.wait()
        for i in range(500):
            sweep.say(f"# {name}: line {i}")

    sweep.run_side_by_side([lambda: report("a"), lambda: report("b")], 2)
    lines = "".join(out.writes).splitlines()
    assert sorted(lines) == sorted(f"# {n}: line {i}" for n in "ab" for i in range(500))
