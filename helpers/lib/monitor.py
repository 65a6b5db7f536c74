"""Online linearity monitor: a `TrainerCallback` that tracks how linear the weight trajectory is while training runs.

    monitor = LinearityMonitor.from_config(cfg)          # the `monitor` section of the params file
    monitor.attach(trainer)                              # any transformers / TRL trainer, e.g. GRPOTrainer
    helpers.lib.training.train_rl(cfg, out_dir, callbacks=[monitor])   # or as a plain callback (metrics: below)

Sketch. Per trainable `.weight` tensor a fixed sample of entries, `helpers.lib.linearity.sample_index` with notebook
01's rule and seed (`fraction`, `min_samples`, `seed`), is read at train begin (step 0) and every `every` optimizer
steps; the last `window` snapshots are kept (float32, CPU). The sketch — window × entries × 4 bytes of snapshots plus
8 bytes of index per entry — is capped by `budget_mb`: when the sample would exceed it, the fraction is shrunk
uniformly (the largest one that fits, by bisection; `effective_fraction`); when `min_samples` alone does not fit,
`on_train_begin` fails. The statistics run over column blocks (one tensor at a time for the moved test), so the
memory they add is a block (or the largest tensor's sample) plus one float64 R² per moved entry.

Statistics, every `every` steps once the window holds ≥ 3 snapshots (`window_stats`; rows of `history`):
- `weight_r2_median`: median `linearity.r2` against the step, over the window, of the entries that moved in it
  (notebook 01's "moved" test, `linearity.moved_mask`, at each tensor's storage dtype; its distinct-values test is not
  applied, since a window may hold only 3 snapshots);
- `rank1_ev`: λ₁ / Σλ of the Gram matrix of the window's deltas (rows = snapshot − the window's first snapshot), top
  eigenvalue by `relex.top_eigen` as in RELEX, over all sampled entries of all tensors together;
- `cosine`: cosine between the latest displacement (last − previous snapshot) and the window's rank-1 direction,
  oriented (as `top_eigen` does) so that the latest snapshot's coefficient is ≥ 0: 1 = still moving along the
  window's line, < 0 = turning back.

How the metrics reach the logs. transformers builds the callback list as DefaultFlowCallback, the reporting
integrations of `report_to` (W&B, TensorBoard, ...), then the user's callbacks, and `Trainer.log` appends a copy of
`logs` to `state.log_history` before calling every `on_log` in that order; so a user callback that adds to `logs` in
`on_log` is too late for the integrations. `on_step_end` runs before the step's `Trainer.log`, so the statistics are
computed there and kept pending; `attach(trainer)` adds the monitor at the end of the list and a small reporter at
its front, whose `on_log` adds the pending statistics (keys `METRICS`) to `logs` — every integration then sees them —
and to the `state.log_history` entry just appended (trainer_state.json). (TRL's GRPOTrainer also averages its private
`_metrics` dict into each log; the reporter works for any trainer and needs no private attribute.) Passed as a plain
callback (`callbacks=[...]`, as `train_rl` does) the monitor adds them in its own `on_log`: later callbacks and
`state.log_history` see them, the integrations do not (a warning says so when `report_to` is set). Either way the
run's `log.csv` (`helpers.lib.training.TrajectoryLog`, fixed `LOG_COLUMNS`) gets the `METRICS` columns at every
checkpoint and at the end (`rl_extra.add_log_columns`, as RL-Extra adds its step columns).

Multiple processes: the weights are read through `helpers.lib.rl_extra.Weights` (DDP, FSDP1 `summon_full_params`,
DeepSpeed ZeRO-3 `GatheredParameters` + fp32 master values), which every process calls (gathering is collective);
only the world process zero keeps the sketch, computes and logs. Parameter names lose FSDP's wrapper prefixes so that
the sample matches the checkpoints'.

Resume. Every checkpoint gets the window as `monitor_window.safetensors` (snapshots, their steps, and the sampled
tensor names and counts as metadata). On resume (`state.global_step` > 0 at `on_train_begin`) the window is read back
from `resume_from` (default: `<output_dir>/checkpoint-<step>`), so the statistics go on as if training had not
stopped; a checkpoint without that file restarts the window at the resumed step (with a warning), and one whose sample
differs (other tensors, fraction or seed) is an error naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback

from helpers.lib.linearity import moved_mask, r2, sample_index
from helpers.lib.relex import top_eigen
from helpers.lib.rl_extra import Weights, add_log_columns

METRICS = {
    "weight_r2_median": "monitor/weight_r2_median",
    "rank1_ev": "monitor/rank1_ev",
    "cosine": "monitor/cosine",
}
WINDOW_FILE = "monitor_window.safetensors"
BLOCK = 1 << 16  # sketch columns converted to float64 at a time by `window_stats`
INDEX_BYTES = 8  # per sampled entry (int64 flat index)
_WRAPPERS = re.compile(r"(?:_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")


def sample_count(numels: Mapping[str, int], fraction: float, min_samples: int) -> int:
    """Entries `sample_index` draws over tensors of these sizes."""
    return sum(min(n, max(int(min_samples), math.ceil(fraction * n))) for n in numels.values())


def sketch_bytes(entries: int, window: int) -> int:
    """Memory of a sketch of `entries` sampled entries over `window` float32 snapshots, indices included."""
    return entries * (4 * int(window) + INDEX_BYTES)


def effective_fraction(
    numels: Mapping[str, int], fraction: float, min_samples: int, window: int, budget_mb: float
) -> float:
    """`fraction`, or the largest smaller fraction whose sketch fits in `budget_mb` MiB (bisection)."""
    budget = float(budget_mb) * 2**20
    fits = lambda f: sketch_bytes(sample_count(numels, f, min_samples), window) <= budget  # noqa: E731
    if fits(fraction):
        return float(fraction)
    if not fits(0.0):
        floor = sketch_bytes(sample_count(numels, 0.0, min_samples), window) / 2**20
        raise ValueError(
            f"monitor: min_samples = {min_samples} per tensor alone needs {floor:.1f} MiB over a window of {window}, "
            f"more than budget_mb = {budget_mb}"
        )
    lo, hi = 0.0, float(fraction)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def window_stats(snapshots: Sequence[np.ndarray], steps: Sequence[float], moved: np.ndarray) -> dict[str, float]:
    """The monitor's statistics of a window: `snapshots` W ≥ 3 (K,) float32 rows (a list or a (W, K) array), one per
    step of `steps`; `moved` (K,) bool, the entries the R² is taken over. Column blocks of `BLOCK` are stacked and
    converted to float64 one at a time, so the extra memory is a block plus the moved entries' R² values."""
    rows, t = list(snapshots), np.asarray(steps, dtype=np.float64)
    w = len(rows)
    if w < 3:
        raise ValueError(f"window_stats needs at least 3 snapshots, got {w}")
    gram, along, last_sq, r2s = np.zeros((w - 1, w - 1)), np.zeros(w - 1), 0.0, []
    for a in range(0, len(rows[0]), BLOCK):
        b = np.stack([r[a : a + BLOCK] for r in rows]).astype(np.float64)
        deltas, last = b[1:] - b[0], b[-1] - b[-2]
        gram += deltas @ deltas.T
        along += deltas @ last
        last_sq += float(last @ last)
        keep = moved[a : a + BLOCK]
        if keep.any():
            r2s.append(r2(b[:, keep], t))
    r = np.concatenate(r2s) if r2s else np.zeros(0)
    s, u, lam = top_eigen(gram, 1)
    total = float(lam.sum())
    return {
        "weight_r2_median": float(np.median(r)) if r.size else math.nan,
        "rank1_ev": float(lam[0] / total) if total > 0 else math.nan,
        # ⟨last, v⟩ with v = Dᵀu / s (a unit vector): (D·last)·u / s
        "cosine": float(along @ u[:, 0] / (s[0] * math.sqrt(last_sq))) if len(s) and last_sq > 0 else math.nan,
    }


class _Reporter(TrainerCallback):
    """First in the trainer's callback list (`LinearityMonitor.attach`): hands pending statistics to every `on_log`."""

    def __init__(self, monitor: LinearityMonitor):
        self.monitor = monitor

    def on_log(self, args, state, control, logs=None, **kw):
        self.monitor.report(state, logs)


class LinearityMonitor(TrainerCallback):
    """Bounded-memory sketch of the weight trajectory and its linearity statistics (module docstring).

    Attributes: `history` (dicts: step + `METRICS`' short names, one per computed window), `index` ({tensor name:
    sampled flat indices}), `names` (tensor order of a snapshot's entries), `effective_fraction`, `snapshots` (deque of
    (K,) float32 arrays), `steps` (their steps), `seconds` (wall-clock the monitor took).
    """

    def __init__(
        self,
        every: int = 12,
        window: int = 8,
        fraction: float = 0.001,
        min_samples: int = 1000,
        budget_mb: float = 256,
        seed: int = 0,
        resume_from: str | Path | None = None,
    ):
        if int(every) < 1 or int(window) < 3:
            raise ValueError(f"monitor: every must be ≥ 1 and window ≥ 3 (got every={every}, window={window})")
        if not 0 < float(fraction) <= 1 or float(budget_mb) <= 0:
            raise ValueError(f"monitor: fraction must be in (0, 1] and budget_mb > 0 (got {fraction}, {budget_mb})")
        self.every, self.window, self.fraction = int(every), int(window), float(fraction)
        self.min_samples, self.budget_mb, self.seed = int(min_samples), float(budget_mb), int(seed)
        self.history: list[dict] = []
        self.index: dict[str, torch.Tensor] = {}
        self.names: list[str] = []
        self.effective_fraction = self.fraction
        self.snapshots: deque[np.ndarray] = deque(maxlen=self.window)
        self.steps: deque[int] = deque(maxlen=self.window)
        self._weights: Weights | None = None
        self._raw: dict[str, str] = {}  # parameter name as the model has it -> tensor name (FSDP prefixes gone)
        self._dtypes: list[tuple[int, int, torch.dtype]] = []  # (first, end) columns of a snapshot per tensor, dtype
        self._pending: dict[str, float] = {}
        self._attached = False
        self.seconds = 0.0  # wall-clock spent reading snapshots and computing statistics
        self.resume_from = Path(resume_from) if resume_from is not None else None

    @classmethod
    def from_config(cls, cfg) -> LinearityMonitor:
        """The monitor of a config's `monitor` section, sampling with the config's seed (notebook 01's)."""
        return cls(**cfg.monitor, seed=cfg.seed)

    def attach(self, trainer):
        """Add the monitor to `trainer` so that the reporting integrations see its metrics; returns the trainer."""
        trainer.add_callback(self)
        trainer.callback_handler.callbacks.insert(0, _Reporter(self))
        self._attached = True
        return trainer

    @property
    def nbytes(self) -> int:
        """Memory the sketch holds now: snapshots and indices."""
        return sum(s.nbytes for s in self.snapshots) + sum(i.numel() * i.element_size() for i in self.index.values())

    def plan(self, numels: Mapping[str, int]) -> None:
        """Choose the sample of tensors of these sizes ({clean name: numel}) within the budget."""
        self.effective_fraction = effective_fraction(
            numels, self.fraction, self.min_samples, self.window, self.budget_mb
        )
        self.index = {
            n: sample_index(n, k, self.effective_fraction, self.min_samples, self.seed) for n, k in numels.items()
        }

    def on_train_begin(self, args, state, control, model=None, **kw):
        if args.report_to and not self._attached:
            warnings.warn(
                "LinearityMonitor passed as a plain callback: the reporting integrations run before it and miss its "
                "metrics; use monitor.attach(trainer)",
                stacklevel=2,
            )
        self._weights = Weights(model)
        numels, dtypes, self._raw = {}, {}, {}
        with self._weights.full() as params:
            for raw, p in params:
                if raw.endswith(".weight"):
                    name = _WRAPPERS.sub("", raw)
                    numels[name], dtypes[name], self._raw[raw] = self._weights.value(p).numel(), p.dtype, name
        self.plan(numels)
        self.names = list(numels)
        ends = np.cumsum([len(self.index[n]) for n in self.names]).tolist()
        self._dtypes = [(e - len(self.index[n]), e, dtypes[n]) for n, e in zip(self.names, ends)]
        if not (int(state.global_step) and self._resume(args, state)):
            self.restart(state)

    def _window_meta(self) -> dict[str, str]:
        counts = [len(self.index[n]) for n in self.names]
        return {"names": json.dumps(self.names), "counts": json.dumps(counts), "every": str(self.every)}

    def _resume(self, args, state) -> bool:
        """Read the window saved with the checkpoint training resumes from; False when there is none."""
        step = int(state.global_step)
        path = (self.resume_from or Path(args.output_dir) / f"checkpoint-{step}") / WINDOW_FILE
        if not path.is_file():
            warnings.warn(f"monitor: resuming at step {step} without {path}: the window restarts here", stacklevel=2)
            return False
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            snapshots, steps = f.get_tensor("snapshots"), f.get_tensor("steps")
        mine = self._window_meta()
        if any(meta.get(k) != v for k, v in mine.items()):
            raise ValueError(
                f"{path}: the saved window samples other entries (tensors, counts or every differ from this run's "
                f"monitor: fraction {self.effective_fraction:g}, min_samples {self.min_samples}, seed {self.seed})"
            )
        if int(steps[-1]) > step:
            raise ValueError(f"{path}: the window reaches step {int(steps[-1])}, past the resumed step {step}")
        self.snapshots.clear()
        self.steps.clear()
        for row, t in zip(snapshots.numpy(), steps.tolist()):
            self.snapshots.append(row.copy())
            self.steps.append(int(t))
        return True

    def restart(self, state) -> None:
        """Empty the window and start it with the weights as they are now (after a jump or a rollback the trajectory
        restarts: earlier snapshots are not on the same line)."""
        t = time.perf_counter()
        self.snapshots.clear()
        self.steps.clear()
        self._snapshot(state)
        self.seconds += time.perf_counter() - t

    def _snapshot(self, state) -> None:
        """Read the sampled entries (every process: the gathering is collective); process zero keeps them."""
        values = self._weights.read({raw: self.index[name] for raw, name in self._raw.items()})
        if not state.is_world_process_zero:
            return
        by_name = {self._raw[raw]: v for raw, v in values.items()}
        self.snapshots.append(torch.cat([by_name[n] for n in self.names]).numpy())
        self.steps.append(int(state.global_step))

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every:
            return
        t = time.perf_counter()
        self._snapshot(state)
        if state.is_world_process_zero and len(self.snapshots) >= 3:
            stats = window_stats(self.snapshots, list(self.steps), self._moved())
            self.history.append({"step": int(state.global_step), **stats})
            self._pending = {METRICS[k]: v for k, v in stats.items() if not math.isnan(v)}  # JSON loggers
        self.seconds += time.perf_counter() - t

    def _moved(self) -> np.ndarray:
        """Entries that moved over the window, each at its tensor's storage dtype (notebook 01's test), one tensor
        at a time."""
        out = np.zeros(len(self.snapshots[0]), dtype=bool)
        for a, b, dtype in self._dtypes:
            out[a:b] = moved_mask(np.stack([s[a:b] for s in self.snapshots]), dtype)
        return out

    def report(self, state, logs) -> None:
        """Add the pending statistics to `logs` and to the newest `state.log_history` entry (once)."""
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_log(self, args, state, control, logs=None, **kw):
        self.report(state, logs)

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self._save_window(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self._add_log_columns(args)

    def _save_window(self, ckpt: Path) -> None:
        if not self.snapshots or not ckpt.is_dir():
            return
        tensors = {
            "snapshots": torch.from_numpy(np.stack(self.snapshots)),
            "steps": torch.tensor(list(self.steps), dtype=torch.int64),
        }
        tmp = ckpt / f".{WINDOW_FILE}.tmp"
        save_file(tensors, str(tmp), metadata=self._window_meta())
        os.replace(tmp, ckpt / WINDOW_FILE)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self._add_log_columns(args)

    def _add_log_columns(self, args) -> None:
        rows = {h["step"]: {METRICS[k]: h[k] for k in METRICS} for h in self.history}
        add_log_columns(Path(args.output_dir) / "log.csv", list(METRICS.values()), lambda s: rows.get(s, {}))
