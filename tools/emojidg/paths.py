"""Paths the tools write: commands that run from a clone, and targets that already hold data.

Model cards and results files record the command that made them; an absolute path of the machine
that ran it (``/home/me/clipood-zoo/data/emojidg``) would have to be edited before the command runs
anywhere else. The tools run their subprocesses from the repository root, so relative paths suffice.
The builders never write over a folder that holds data (the committed subset, an earlier build)
unless ``--overwrite`` asks for it (:func:`occupied`).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import List, Sequence

REPO = Path(__file__).resolve().parents[2]


def repo_relative(arg: str | Path) -> str:
    """``arg`` relative to the repository root when it is an absolute path inside it, else unchanged.

    Also rewrites the value of ``--flag=/abs/path``; relative arguments are left alone (they are not
    known to be paths, and the tools take them relative to the root already).
    """
    text = str(arg)
    if text.startswith("--") and "=" in text:
        flag, _, value = text.partition("=")
        return f"{flag}={repo_relative(value)}"
    path = Path(text)
    if not path.is_absolute():
        return text
    # as written first: a data folder symlinked into the clone is a path inside it, wherever its link points
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        try:
            return candidate.relative_to(REPO).as_posix()
        except ValueError:
            continue
    return text


def portable_command(argv: Sequence[str]) -> str:
    """``python SCRIPT ARGS`` for ``sys.argv``-like ``argv``, shell-quoted, repository paths made relative."""
    return shlex.join(["python", *map(repo_relative, argv)])


def occupied(targets: Sequence[Path]) -> List[Path]:
    """The targets that exist and hold anything (so writing there would replace someone's data)."""
    return [t for t in targets if t.exists() and (not t.is_dir() or any(t.iterdir()))]
