"""Scoring: avg@k / pass@k of a sampler on held-out problems, per-item scores, and held-out scores cached on disk.

scores = evaluate(sampler, items, k=8, temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)
scores["avg_at_k"], scores["pass_at_k"], scores["per_item"]     # per_item: each problem's share of its k samples
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers.lib import math_tasks, tasks
from helpers.lib.backends import make_sampler
from helpers.lib.cache import cache_dir, dir_fingerprint
from helpers.lib.device import cpu_threads
from helpers.lib.paths import atomic_write_json
from helpers.lib.sampling import HFSampler, Sampler


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(
    sampler: Sampler,
    items: Sequence[tasks.Item],
    k: int = 8,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 16,
    seed: int = 0,
    greedy: bool = True,
) -> dict:
    """avg@k, pass@j (j = 1, 2, 4, .. k), mean token entropy of the sampled distributions, mean completion length
    (characters) and — with `greedy` — greedy accuracy, over `items`; `per_item` / `greedy_per_item` hold each item's
    score (share of its k samples correct / greedy 0 or 1), from which `helpers.experiments.claims` makes intervals."""
    prompts = [it.prompt for it in items]
    res: dict[str, Any] = {"n_items": len(items), "k": k}
    if k > 0:
        samples = sampler.generate(
            prompts, n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        correct = np.array([[it.is_correct(c) for c in row] for row, it in zip(samples, items)])
        res[f"avg@{k}"] = float(correct.mean())
        res["per_item"] = correct.mean(1).tolist()  # each item's share of correct samples (for intervals)
        for j in sorted({2**i for i in range(int(math.log2(k)) + 1)} | {k}):
            res[f"pass@{j}"] = float(np.mean([pass_at_k(k, int(c), j) for c in correct.sum(1)]))
        res["entropy"] = getattr(sampler, "last_entropy", None)
        res["completion_length"] = float(np.mean([len(c) for row in samples for c in row]))
    if greedy:
        outs = sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
        hits = [int(it.is_correct(o[0])) for o, it in zip(outs, items)]
        res["greedy_accuracy"] = sum(hits) / max(len(items), 1)
        res["greedy_per_item"] = hits
    return res


def greedy_accuracy(model, tokenizer, items: Sequence[tasks.Item], max_new_tokens: int, batch_size: int = 512) -> float:
    """Share of `items` the model answers right greedily (the held-out curve of a training log)."""
    outs = HFSampler(model, tokenizer, batch_size).generate(
        [it.prompt for it in items], n=1, temperature=0.0, max_new_tokens=max_new_tokens
    )
    return sum(it.is_correct(o[0]) for it, o in zip(items, outs)) / max(len(items), 1)


def evaluate_model(
    path: str | Path,
    items: Sequence[tasks.Item],
    eval_cfg,
    device: str = "auto",
    backend: str | None = None,
    allow_pickle: bool = False,
) -> dict:
    """`evaluate` of one model directory with the knobs of the `eval` params section (backend: `eval.backend`
    unless given); a sampler that holds an engine (vllm) is closed afterwards, freeing its memory."""
    sampler = make_sampler(
        backend or eval_cfg["backend"],
        path,
        device=device,
        batch_size=int(eval_cfg["batch_size"]),
        allow_pickle=allow_pickle,
    )
    return _evaluate_and_close(sampler, items, eval_cfg)


def _evaluate_and_close(sampler: Sampler, items: Sequence[tasks.Item], eval_cfg) -> dict:
    """`evaluate` with the knobs of the `eval` params section, then the sampler's `close()` when it has one."""
    try:
        return evaluate(
            sampler,
            items,
            k=int(eval_cfg["k"]),
            temperature=float(eval_cfg["temperature"]),
            top_p=float(eval_cfg["top_p"]),
            max_new_tokens=int(eval_cfg["max_new_tokens"]),
            seed=int(eval_cfg["seed"]),
        )
    finally:
        getattr(sampler, "close", lambda: None)()


def heldout_items(cfg, tokenizer=None) -> list:
    """The fixed held-out problems of the config's task: the arithmetic split, or (`task.kind: math`) the problems
    of the `math` section, prompts through `tokenizer`'s chat template (`runs.heldout_items` passes the run's)."""
    if cfg.task.kind == "math":
        if tokenizer is None and cfg.math.dataset:  # without a dataset, math_tasks names that error
            raise ValueError(
                f"{cfg.source}: the math task's held-out prompts need the run's tokenizer "
                f"(helpers.lib.runs.heldout_items(cfg) passes it)"
            )
        return math_tasks.from_config(cfg, tokenizer)
    if cfg.task.kind != "arithmetic":
        raise ValueError(f"{cfg.source}: task.kind must be arithmetic or math, not {cfg.task.kind!r}")
    return tasks.split(cfg.task)[1]


SCORES_VERSION = 2  # `cache.cached_build` version of cached `evaluate` dicts (2: with per-item scores)


@dataclass(frozen=True, eq=False)
class PerItem:
    """One model's per-item held-out scores, kept in a table cell next to its mean (shown as its size)."""

    values: np.ndarray

    def __repr__(self) -> str:
        return f"<{len(self.values)} items>"

    @classmethod
    def of(cls, res: Mapping, key: str = "per_item") -> PerItem:
        """The per-item scores `key` of an `evaluate` dict."""
        return cls(np.asarray(res[key], dtype=np.float64))

    @staticmethod
    def scores(cell) -> np.ndarray:
        """A table cell of per-item scores (a `PerItem`, or a plain list as read back from JSON) as float64."""
        return np.asarray(cell.values if isinstance(cell, PerItem) else cell, dtype=np.float64)


class CachedScorer:
    """Held-out scores (`evaluate` with the `eval` section's knobs) of models on the first `n_items` problems of
    `heldout` (all when falsy; `runs.heldout_items(cfg)`), each cached on disk under
    `outputs/cache/scores-v<N>-<hash>/scores.json` keyed
    by what identifies the model + items, task, math, eval and device settings (so a re-run does not evaluate again).

    `score(identity, make)` scores any sampler `make()` builds; `checkpoint(path)` a model directory with the
    `eval.backend` sampler. Subclasses add other kinds of models (helpers.experiments.nb04_extrapolation)."""

    def __init__(self, cfg, heldout: Sequence, n_items: int | None = None):
        self.items = heldout[:n_items] if n_items else heldout
        self.cfg, self.k = cfg, int(cfg.eval.k)
        self.metric = f"avg@{self.k}"
        self._memo: dict[str, dict] = {}

    def sampler_kwargs(self) -> dict:
        return {
            "device": self.cfg.device,
            "batch_size": int(self.cfg.eval.batch_size),
            "allow_pickle": bool(self.cfg.trajectory.allow_pickle),
        }

    def score(self, identity: Mapping, make: Callable[[], Sampler]) -> dict:
        """The `evaluate` dict of the sampler `make()` builds, from the cache when `identity` was scored before."""
        made_from = {
            **identity,
            "items": len(self.items),
            **{k: self.cfg.get(k) for k in ("task", "math", "eval", "device")},
        }
        file = cache_dir("scores", made_from, SCORES_VERSION) / "scores.json"
        key = str(file)
        if key not in self._memo:
            if not file.is_file():
                with cpu_threads():
                    atomic_write_json(file, _evaluate_and_close(make(), self.items, self.cfg.eval))
            self._memo[key] = json.loads(file.read_text())
        return self._memo[key]

    def checkpoint(self, path: str | Path) -> dict:
        """The `evaluate` dict of one model directory (`eval.backend` sampler)."""
        return self.score(
            {"checkpoint": dir_fingerprint(path)},
            lambda: make_sampler(self.cfg.eval.backend, path, **self.sampler_kwargs()),
        )

    def accuracy(self, path: str | Path) -> float:
        """avg@k of one model directory (whatever a subclass's `checkpoint` reports)."""
        return float(CachedScorer.checkpoint(self, path)[self.metric])


def evaluate_checkpoints(
    paths: Mapping[Any, str | Path], cfg, items: Sequence[tasks.Item] | None = None, backend: str | None = None
):
    """`evaluate_model` of each model directory in `paths` (label -> dir) on the held-out items: {label: scores}."""
    items = heldout_items(cfg) if items is None else items
    return {
        label: evaluate_model(
            path, items, cfg.eval, device=cfg.device, backend=backend, allow_pickle=cfg.trajectory.allow_pickle
        )
        for label, path in paths.items()
    }
