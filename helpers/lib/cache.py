"""Content-addressed builds: build an expensive artefact once, atomically, and find it again by what it was made from.

    model_dir = cached_build("base", key, lambda tmp: train(..., tmp), version=BASE_VERSION)

The home of a build is `outputs/cache/<kind>-v<version>-<hash of key>/`. `fn(tmp)` writes into a fresh temporary
directory beside it and may return a dict; `build.json` (that dict + `seconds` it took + `version`) is written last and
the directory is renamed into place, so a directory holding `build.json` is complete and nothing half-built is ever
served. `key` names every input the artefact depends on; `version` names the code: each builder keeps a version
constant next to its code and bumps it when its computation changes, so a fixed builder never serves old artefacts
(the old directories stay on disk until `make clean`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.lib.paths import atomic_dir, atomic_write_json, outputs_root

BUILD_FILE = "build.json"


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def dir_fingerprint(path: str | os.PathLike) -> list:
    """What identifies a directory's contents in cache keys (e.g. a model: weights, config, tokenizer files): its
    resolved path and the (name, size, mtime_ns) of each file in it."""
    d = Path(path).resolve()
    files = sorted(p for p in d.iterdir() if p.is_file())
    return [str(d), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


def cache_dir(kind: str, key: Any, version: int) -> Path:
    """`outputs/cache/<kind>-v<version>-<hash of key>/` — the home of one artefact."""
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"cache version of {kind!r} must be a positive int, got {version!r}")
    return outputs_root() / "cache" / f"{kind}-v{version}-{stable_hash(key)}"


def cached(kind: str, key: Any, version: int) -> Path | None:
    """The complete build of (kind, key, version) when there is one (`cached_build` would not build), else None."""
    final = cache_dir(kind, key, version)
    return final if (final / BUILD_FILE).is_file() else None


def cached_build(kind: str, key: Any, fn: Callable[[Path], dict | None], version: int) -> Path:
    """The directory of (kind, key, version), built with `fn(tmp)` on a miss (see the module docstring)."""
    final = cache_dir(kind, key, version)
    if (final / BUILD_FILE).is_file():
        return final
    t0 = time.time()
    with atomic_dir(final) as tmp:
        record = fn(tmp) or {}
        atomic_write_json(tmp / BUILD_FILE, {**record, "seconds": round(time.time() - t0, 2), "version": version})
    return final


def build_info(path: str | os.PathLike) -> dict:
    """What a build recorded (`build.json`), or {} for a directory not built by `cached_build` (e.g. a user's run)."""
    file = Path(path) / BUILD_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e}); delete the directory to rebuild it") from e
