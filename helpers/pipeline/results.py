"""One way to write and read what a notebook measured: `results/<notebook>.json`, atomic, JSON-clean."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from helpers.lib.paths import atomic_write_json


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


def results_path(run_dir: str | Path, notebook: str) -> Path:
    return Path(run_dir) / "results" / f"{notebook}.json"


def save(run_dir: str | Path, notebook: str, results: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write `results` (plus `_meta`: params hash, profile, …) atomically; the file exists only once complete."""
    payload = dict(to_jsonable(results))
    if meta:
        payload["_meta"] = to_jsonable(meta)
    return atomic_write_json(results_path(run_dir, notebook), payload)


def load(run_dir: str | Path, notebook: str) -> dict:
    path = results_path(run_dir, notebook)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results — run notebook {notebook} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt results file ({e})") from e

