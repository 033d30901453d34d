"""Output-path safety: nothing poolcli writes, stages or cleans up may be an input, or hold one.

A run writes its output (a file, or a whole dataset directory), hidden state, lock and staging names beside a file
output (`.NAME.poolcli*`), and an error file with its own staging name (`.NAME.poolcli-PID.tmp`). Before anything
is touched, every input file and input directory is compared with those paths: by resolved path (symlinks and `..`
resolved) and, for files that exist, by inode (hard links). Any overlap is a usage error (exit 64).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, NamedTuple

from poolcli.errors import UsageError

OutputKind = Literal["file", "dir", "stdout"]


class Claim(NamedTuple):
    """A path a run owns: the file or directory itself, and (for files) the hidden names poolcli puts beside it."""

    what: str
    path: Path
    tree: bool
    """The whole directory belongs to the run (a dataset-directory output)."""


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _beside_prefix(path: Path, claim: Path) -> bool:
    """`path` is, or lies inside, a hidden name poolcli derives from `claim` (`.NAME.poolcli...`)."""
    prefix = f".{claim.name}.poolcli"
    for p in (path, *path.parents):
        if p.parent == claim.parent and p.name.startswith(prefix):
            return True
    return False


def output_claims(output: str, kind: OutputKind, errors: Path) -> list[Claim]:
    claims = []
    if kind != "stdout":
        claims.append(Claim("the output", _real(output.rstrip("/") if kind == "dir" else output), tree=kind == "dir"))
    claims.append(Claim("the error file", _real(errors), tree=False))
    return claims


def check_paths(
    files: Iterable[str], roots: Iterable[str], output: str, kind: OutputKind, errors: Path, default_errors: Path
) -> None:
    """Refuse a run whose output, state or error file would overwrite, delete or sit inside one of its inputs.

    `files` are the input files (after directory and glob expansion; `-` is standard input), `roots` the input
    directories, `errors` the error file this run would write and `default_errors` where it goes by default."""
    claims = output_claims(output, kind, errors)
    inputs = [(f, _real(f), _inode(Path(f))) for f in files if f != "-"]
    dirs = [(r, _real(r)) for r in roots]
    for claim in claims:
        claim_inode = _inode(claim.path)
        for shown, real, inode in inputs:
            if (
                real == claim.path
                or (inode is not None and inode == claim_inode)
                or (claim.tree and _inside(real, claim.path))
                or (not claim.tree and _beside_prefix(real, claim.path))
            ):
                raise UsageError(
                    f"the input {shown} is {claim.what} of this run (or lies inside it); poolcli would overwrite "
                    "or delete it",
                    hint="choose another -o / --errors path",
                )
        for shown, real in dirs:
            if _inside(claim.path, real) or (claim.tree and _inside(real, claim.path)):
                raise UsageError(
                    f"{claim.what} {claim.path} would be inside the input directory {shown} (or contain it)",
                    hint="write the output outside the input directory",
                )
    if kind == "stdout":
        return
    out = claims[0].path
    err = claims[1].path
    if err == out or _inode(err) is not None and _inode(err) == _inode(out):
        raise UsageError(f"--errors {errors} is the output itself", hint="give the error file its own path")
    if kind == "dir" and _inside(err, out) and err != _real(default_errors):
        raise UsageError(
            f"--errors {errors} is inside the output directory, where only poolcli's own files may be",
            hint=f"leave --errors out (the default is {default_errors}) or write it elsewhere",
        )
    if kind == "file" and _beside_prefix(err, out):
        raise UsageError(f"--errors {errors} collides with the output's hidden state files", hint="rename it")
    if os.path.isdir(err):
        raise UsageError(f"--errors {errors} is a directory", hint="give a file path")


def probe_dir(path: Path) -> OSError | None:
    """Whether a run could create the directory `path` and write in it, found without leaving anything behind (a
    dry run's check): an empty hidden directory is made and removed at once in `path`, or in its nearest parent
    that exists. Permissions alone would not tell (root may write anywhere but in /proc, on a read-only mount,
    ...). Returns the error the run would meet, or None."""
    at = path
    while not os.path.lexists(at) and at != at.parent:
        at = at.parent
    if not at.is_dir():
        return NotADirectoryError(20, "Not a directory", str(at))
    probe = at / f".poolcli-probe-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return exc
    return None
