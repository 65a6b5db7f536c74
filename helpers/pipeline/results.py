"""What a notebook measured and the code that measured it: `results/<notebook>.json` (atomic, JSON-clean) and the code
versions that tell whether results are current."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from helpers.lib.cache import stable_hash
from helpers.lib.paths import atomic_write_json
from helpers.pipeline.rundir import RunDir

HELPERS = Path(__file__).resolve().parents[1]  # the helpers package


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays to plain Python; NaN and ±inf to None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save(
    run_dir: str | os.PathLike, notebook: str, results: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> Path:
    """Write `results` (plus `_meta`: params hash, profile, …) atomically; the file exists only once complete."""
    payload = dict(to_jsonable(results))
    if meta:
        payload["_meta"] = to_jsonable(meta)
    return atomic_write_json(RunDir(run_dir).results(notebook), payload)


def load(run_dir: str | os.PathLike, notebook: str) -> dict:
    """A notebook's results; a missing or corrupt file is an error naming it."""
    path = RunDir(run_dir).results(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results — run notebook {notebook} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt results file ({e})") from e


def read(run_dir: str | os.PathLike, notebook: str) -> dict | None:
    """A notebook's results, or None when the file is missing or unreadable (for pages and completeness checks)."""
    try:
        return json.loads(RunDir(run_dir).results(notebook).read_text())
    except (OSError, ValueError):
        return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def helpers_version(package: str | os.PathLike = HELPERS) -> str:
    """A stable hash of the helpers package's source files (`**/*.py`, by path and content; not their times)."""
    root = Path(package)
    return stable_hash({p.relative_to(root).as_posix(): _digest(p) for p in sorted(root.rglob("*.py"))})


def code_version(notebook: str | os.PathLike) -> str:
    """The code a notebook's results are made by: the helpers package's sources and the notebook file itself."""
    return stable_hash({"helpers": helpers_version(), "notebook": _digest(Path(notebook))})
