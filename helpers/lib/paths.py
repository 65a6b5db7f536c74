"""Where things live: the repo, outputs/, content-addressed caches, and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def outputs_root() -> Path:
    """`outputs/` at the repo top, or `$RLVR_OUTPUTS` when set."""
    return Path(os.environ.get("RLVR_OUTPUTS", REPO / "outputs"))


def resolve(path: str | os.PathLike) -> Path:
    """A path as given if it exists, else relative to the repo top (so notebooks work from any cwd)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO / p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file + rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; the file gets the permissions of an ordinary one
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def umask() -> int:
    """The process's umask (what ordinary new files and directories lose from 0666 / 0777)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# `atomic_dir`'s temporary directories: `.NAME.HOST-PID.XXXXXXXX.partial`, naming the process that made them
PARTIAL = re.compile(r"\..+\.(?P<host>[^.]*)-(?P<pid>\d+)\.[^.]+\.partial")


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove the `atomic_dir` temporaries in `parent` whose process (on this host) is no longer running — left by a
    SIGKILL, a crash or a power cut — and say so on stderr. Returns the removed paths."""
    removed = []
    for p in sorted(parent.glob(".*.partial")):
        m = PARTIAL.fullmatch(p.name)
        if m and m["host"] == _host() and not _running(int(m["pid"])) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            print(
                f"removed {p}: an unfinished temporary directory of process {m['pid']}, which is no longer running",
                file=sys.stderr,
            )
            removed.append(p)
    return removed


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT left at their default action (which kills the process outright) raise
    SystemExit instead, so cleanup clauses run. Main thread only (Python's own SIGINT handler already raises)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) == signal.SIG_DFL]
    for s in taken:
        signal.signal(s, _exit_on_signal)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and rename it to `final` only if the block succeeds.

    An interrupted build leaves no `final`, so "the directory exists" always means "the artefact is complete". The
    temp directory (`.NAME.HOST-PID.XXXXXXXX.partial`, beside `final`) is removed when the block fails and on SIGTERM
    / SIGINT; one left by a killed process is removed by the next `atomic_dir` in the same parent. `final` gets the
    umask's permissions. An existing `final` is replaced: callers decide whether it may be.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final.parent)
    with _signals_raise():
        tmp = Path(
            tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{_host()}-{os.getpid()}.", suffix=".partial")
        )
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
