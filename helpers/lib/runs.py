"""Run resolution: from a config to the run(s) to analyse — the one place that does it.

    traj = runs.trajectory(cfg)          # a user's `trajectory.dir`, or the embedded default (trained and cached here)
    dirs = runs.run_dirs(cfg)            # {seed: run directory} of every RL seed, missing ones trained side by side
    items = runs.heldout_items(cfg)      # the held-out problems, math prompts through the run's chat template

Seeds are part of the embedded default: one RL run is an anecdote, so it is trained `rl.seeds` times (RL seeds
rl.seed, rl.seed + 1, …, all from the same base model and task split). A user's run (`trajectory.dir`) is a single
run whatever `rl.seeds` says: its seed is reported as `rl.seed`. Nothing below this module imports `training` to find
a run; the readers (`trajectory`, `checkpoint_io`) only read directories.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.lib import scoring, training
from helpers.lib.config import derive
from helpers.lib.paths import resolve
from helpers.lib.trajectory import Trajectory, discover, is_extrapolation


def run_dir(cfg) -> Path:
    """The directory of the run a config names: `trajectory.dir`, or, without one, the run trained here
    (`training.embedded_trajectory`, whose checkpoint-0 is the starting model)."""
    if cfg.trajectory.dir:
        return resolve(cfg.trajectory.dir)
    return training.embedded_trajectory(cfg)


def trajectory(cfg) -> Trajectory:
    """The trajectory of `run_dir(cfg)`, with `trajectory.base` as step 0 when the run has no step-0 checkpoint of
    its own (a run trained here, or one saved with its start, has; `trajectory.base` then only names the model
    training started from)."""
    t, source = cfg.trajectory, run_dir(cfg)
    has_start = any(step == 0 and not is_extrapolation(path) for step, path, _ in discover(source, None))
    base = resolve(t.base) if t.base and not has_start else None
    return Trajectory(source, base=base, allow_pickle=bool(t.allow_pickle))


def heldout_items(cfg) -> list:
    """The fixed held-out problems of the config's task (`scoring.heldout_items`); on `task.kind: math` their
    prompts go through the chat template of the run's tokenizer."""
    tokenizer = trajectory(cfg).load_tokenizer() if cfg.task.kind == "math" else None
    return scoring.heldout_items(cfg, tokenizer)


def seed_list(cfg) -> list[int]:
    """The RL seeds of the config: rl.seed … rl.seed + rl.seeds − 1 (just rl.seed for a user's run)."""
    n = 1 if cfg.trajectory.dir else int(cfg.rl.get("seeds", 1))
    if n < 1:
        raise ValueError(f"{cfg.source}: rl.seeds must be at least 1, got {n}")
    return [int(cfg.rl.seed) + i for i in range(n)]


def config_for(cfg, seed: int):
    """`cfg` with its RL run at `seed` (base model, split and every other knob unchanged; `config.derive`)."""
    return derive(cfg, {"rl.seed": int(seed)})


def run_dirs(cfg, workers: int = 2) -> dict[int, Path]:
    """{seed: run directory} of every seed. Seeds not yet cached are trained `workers` at a time, each in its own
    single-threaded process (the base model is built first, once); a user's run is returned as it is."""
    seeds = seed_list(cfg)
    if cfg.trajectory.dir:
        return {seeds[0]: run_dir(cfg)}
    missing = [s for s in seeds if training.cached_trajectory(config_for(cfg, s)) is None]
    if missing:
        training.base_model(cfg)
        training.in_processes(training.embedded_trajectory, [(config_for(cfg, s),) for s in missing], workers)
    return {s: run_dir(config_for(cfg, s)) for s in seeds}


def per_seed(cfg, measure: Callable[[Trajectory], Any]) -> dict[int, Any]:
    """{seed: measure(trajectory)} over every seed's trajectory."""
    run_dirs(cfg)
    return {s: measure(trajectory(config_for(cfg, s))) for s in seed_list(cfg)}


def endpoints(cfg) -> dict[str, Path]:
    """{"base": the shared step-0 model, "seed N": each seed's last checkpoint} (e.g. for
    `scoring.evaluate_checkpoints`)."""
    trajs = {s: trajectory(config_for(cfg, s)) for s in run_dirs(cfg)}
    first = next(iter(trajs.values()))
    return {"base": first.path(first.steps[0])} | {f"seed {s}": t.path(t.steps[-1]) for s, t in trajs.items()}
