"""Reading a run's per-step training metrics (`log.csv`, or a TRL `trainer_state.json`) as a DataFrame."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers.lib.training import LOG_COLUMNS, TRL_KEYS


def read_log(run_dir: str | Path, required: bool = True) -> pd.DataFrame:
    """Per-step metrics of a run directory as a DataFrame with `LOG_COLUMNS`: its `log.csv`, or else the log history
    in the newest checkpoint's `trainer_state.json` (any TRL run; held-out accuracy then stays empty). With neither:
    an error, or (`required=False`, e.g. a verl run) an empty frame."""
    run_dir = Path(run_dir)
    if (run_dir / "log.csv").is_file():
        return pd.read_csv(run_dir / "log.csv")
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    if not states and not required:
        return pd.DataFrame(columns=LOG_COLUMNS, dtype=float)
    if not states:
        raise FileNotFoundError(f"{run_dir}: no log.csv and no checkpoint-*/trainer_state.json to read metrics from")
    rows: dict[int, dict] = {}
    for entry in json.loads(states[-1].read_text()).get("log_history", []):
        row = rows.setdefault(int(entry.get("step", 0)), {"step": int(entry.get("step", 0))})
        row.update({TRL_KEYS.get(k, k): v for k, v in entry.items() if TRL_KEYS.get(k, k) in LOG_COLUMNS[1:]})
    return pd.DataFrame([rows[s] for s in sorted(rows)], columns=LOG_COLUMNS)
