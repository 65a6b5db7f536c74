"""Where things live: the repo, outputs/, content-addressed caches, and atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]


def outputs_root() -> Path:
    """`outputs/` at the repo top, or `$RLVR_OUTPUTS` when set."""
    return Path(os.environ.get("RLVR_OUTPUTS", REPO / "outputs"))


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def cache_dir(kind: str, made_from: Any) -> Path:
    """`outputs/cache/<kind>-<hash of made_from>/` — the home of one expensive artefact."""
    return outputs_root() / "cache" / f"{kind}-{stable_hash(made_from)}"


def dir_fingerprint(path: str | os.PathLike) -> list:
    """What identifies a directory's contents in cache keys (e.g. a model: weights, config, tokenizer files): its
    resolved path and the (name, size, mtime_ns) of each file in it."""
    d = Path(path).resolve()
    files = sorted(p for p in d.iterdir() if p.is_file())
    return [str(d), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and rename it to `final` only if the block succeeds.

    An interrupted build leaves no `final`, so "the directory exists" always means "the artefact is complete".
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
