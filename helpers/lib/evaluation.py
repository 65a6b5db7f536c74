"""Sampling and scoring shared by every notebook: one `Sampler` interface, several backends, avg@k / pass@k.

    sampler = make_sampler("hf", model_dir)               # or an already loaded model + tokenizer
    scores = evaluate(sampler, heldout_items, k=8, temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)

Backends live in `BACKENDS` (name -> factory). `hf` is a batched step-by-step decoding loop (`decode`) with left
padding, parameterised by where the next-token logits come from (`ModelLogits`: one model and its KV cache), so a
logit-extrapolated pair of models (`logit-extrapolation`, helpers.lib.logit_extrapolation) samples through the very same
loop; another backend (vLLM) registers itself with `register_backend` and implements `Sampler`.
A backend may also set `last_entropy` (mean token entropy of the distributions it sampled from in its last call).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from helpers.lib import tasks
from helpers.lib.device import pick


class Sampler(Protocol):
    def generate(self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[list[str]]:
        """n completions per prompt (temperature 0 = greedy)."""
        ...


def load_model(path: str | Path, device: str | torch.device = "auto", dtype=torch.float32,
               allow_pickle: bool = False):
    """(model in eval mode, tokenizer) of an HF model directory; pickle (`.bin`) weights only with `allow_pickle`
    (the params knob `trajectory.allow_pickle`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not allow_pickle:
        refuse_pickle_only(Path(path))
    hf_logging.disable_progress_bar()
    device = pick(device) if isinstance(device, str) else device
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def refuse_pickle_only(model_dir: Path) -> None:
    """An error for a model directory whose weights are pickle (`.bin`) files only: unpickling can run code."""
    if model_dir.is_dir() and not any(model_dir.glob("*.safetensors")) and any(model_dir.glob("*.bin")):
        raise ValueError(f"{model_dir}: only pickle weights (.bin) found, and loading them can run code; convert them "
                         f"to safetensors, or set trajectory.allow_pickle: true in the params file to load them")


class ModelLogits:
    """Next-token logits of one model with its own KV cache — the logits source of `decode`.

    `start` runs the (left-padded) prompts, `step` feeds one token per row, `keep(rows)` drops finished rows from the
    cache. Position ids follow the attention mask, as in HF `generate`, so left padding does not shift positions.
    """

    def __init__(self, model):
        self.model, self.cache, self.pos = model, None, None

    def _forward(self, ids, mask, pos):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True, logits_to_keep=1)  # the last position only: no (B, L, vocab) prefill logits
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.pos = pos[:, -1]
        return self._forward(input_ids, attention_mask, pos)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.pos = self.pos + 1
        return self._forward(tokens[:, None], attention_mask, self.pos[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.pos = self.pos[rows]


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the smallest set whose probability reaches `top_p` (the top token stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.no_grad()
def decode(source, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           top_p: float, eos_id: int | Sequence[int], pad_id: int, generator: torch.Generator | None = None):
    """Batched decoding from any logits source (`ModelLogits` or a mix of models): temperature, then top-p, then a
    multinomial draw (argmax when temperature is 0); rows that emit a stop token (`eos_id`: one id or several) leave
    the batch.

    Returns (new tokens (B, max_new_tokens) padded with `pad_id`, sum of token entropies, number of tokens); the
    entropy is that of the temperature-scaled distribution at every generated position (EOS included).
    """
    b = input_ids.shape[0]
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    rows = torch.arange(b, device=input_ids.device)
    mask = attention_mask
    logits = source.start(input_ids, attention_mask)
    ent_sum, ent_n = 0.0, 0
    stop = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=out.device)
    for t in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 else logits
        logp = scaled.log_softmax(-1)
        ent_sum += float(-(logp.exp() * logp).nan_to_num().sum())
        ent_n += len(rows)
        if temperature > 0:
            probs = _top_p(scaled, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = scaled.argmax(-1)
        out[rows, t] = nxt
        live = ~torch.isin(nxt, stop)
        if t == max_new_tokens - 1 or not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            source.keep(keep)
            rows, nxt, mask = rows[keep], nxt[keep], mask[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        logits = source.step(nxt, mask)
    return out, ent_sum, ent_n


class HFSampler:
    """Batched decoding of an HF causal LM with left padding and a KV cache (`decode`); one seed gives the same
    completions. Subclasses change only `logits_source` (e.g. two models mixed)."""

    def __init__(self, model, tokenizer, batch_size: int = 512):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.last_entropy: float | None = None

    def logits_source(self):
        return ModelLogits(self.model)

    def stop_ids(self) -> list[int]:
        """Token ids that end a completion: the tokenizer's EOS and every `eos_token_id` of the model's generation
        config (real chat/reasoning models list several, e.g. `<|im_end|>` and `<|endoftext|>`), as vLLM does."""
        ids = {self.tokenizer.eos_token_id}
        config = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(config if isinstance(config, (list, tuple)) else [config])
        ids.discard(None)
        if not ids:
            raise ValueError("the tokenizer and the model's generation config name no EOS token: completions "
                             "would never stop")
        return sorted(int(i) for i in ids)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16, seed: int = 0) -> list[list[str]]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        flat = [p for p in prompts for _ in range(n)]
        out, ent_sum, ent_n = [], 0.0, 0
        for i in range(0, len(flat), self.batch_size):
            enc = tok(flat[i:i + self.batch_size], return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(device)
            new, es, en = decode(self.logits_source(), enc["input_ids"], enc["attention_mask"], max_new_tokens,
                                 temperature, top_p, self.stop_ids(), tok.pad_token_id, gen)
            ent_sum, ent_n = ent_sum + es, ent_n + en
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        self.last_entropy = ent_sum / max(ent_n, 1)
        return [out[j * n:(j + 1) * n] for j in range(len(prompts))]


def _hf(model_or_path, tokenizer=None, device: str = "auto", batch_size: int = 512, allow_pickle: bool = False,
        **_) -> HFSampler:
    if isinstance(model_or_path, (str, Path)):
        model, tokenizer = load_model(model_or_path, device, allow_pickle=allow_pickle)
    else:
        model = model_or_path
        if tokenizer is None:
            raise ValueError("hf sampler: pass `tokenizer=` along with an already loaded model")
    return HFSampler(model, tokenizer, batch_size)


def _logit_extrapolation(models, **kwargs) -> Sampler:
    from helpers.lib.logit_extrapolation import make_sampler as make

    return make(models, **kwargs)


def _vllm(model_or_path, allow_pickle: bool = False, **kwargs) -> Sampler:
    from helpers.lib.vllm_backend import make

    if not allow_pickle and isinstance(model_or_path, (str, Path)):
        refuse_pickle_only(Path(model_or_path))  # vLLM would load .bin weights too
    return make(model_or_path, **kwargs)


BACKENDS: dict[str, Callable[..., Sampler]] = {"hf": _hf, "vllm": _vllm, "logit-extrapolation": _logit_extrapolation}


def register_backend(name: str, factory: Callable[..., Sampler]) -> None:
    BACKENDS[name] = factory


def make_sampler(backend: str, model_or_path: Any, **kwargs) -> Sampler:
    """A sampler of the named backend for a model directory (or a loaded model + `tokenizer=`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](model_or_path, **kwargs)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(sampler: Sampler, items: Sequence[tasks.Item], k: int = 8, temperature: float = 0.6,
             top_p: float = 0.95, max_new_tokens: int = 16, seed: int = 0, greedy: bool = True) -> dict:
    """avg@k, pass@j (j = 1, 2, 4, .. k), mean token entropy of the sampled distributions, mean completion length
    (characters) and — with `greedy` — greedy accuracy, over `items`; `per_item` / `greedy_per_item` hold each item's
    score (share of its k samples correct / greedy 0 or 1), from which `helpers.experiments.claims` makes intervals."""
    prompts = [it.prompt for it in items]
    res: dict[str, Any] = {"n_items": len(items), "k": k}
    if k > 0:
        samples = sampler.generate(prompts, n=k, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens, seed=seed)
        correct = np.array([[it.is_correct(c) for c in row] for row, it in zip(samples, items)])
        res[f"avg@{k}"] = float(correct.mean())
        res["per_item"] = correct.mean(1).tolist()      # each item's share of correct samples (for intervals)
        for j in sorted({2 ** i for i in range(int(math.log2(k)) + 1)} | {k}):
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
    outs = HFSampler(model, tokenizer, batch_size).generate([it.prompt for it in items], n=1, temperature=0.0,
                                                            max_new_tokens=max_new_tokens)
    return sum(it.is_correct(o[0]) for it, o in zip(items, outs)) / max(len(items), 1)


def evaluate_model(path: str | Path, items: Sequence[tasks.Item], eval_cfg, device: str = "auto",
                   backend: str | None = None, allow_pickle: bool = False) -> dict:
    """`evaluate` of one model directory with the knobs of the `eval` params section (backend: `eval.backend`
    unless given); a sampler that holds an engine (vllm) is closed afterwards, freeing its memory."""
    sampler = make_sampler(backend or eval_cfg["backend"], path, device=device,
                           batch_size=int(eval_cfg["batch_size"]), allow_pickle=allow_pickle)
    return _evaluate_and_close(sampler, items, eval_cfg)


def _evaluate_and_close(sampler: Sampler, items: Sequence[tasks.Item], eval_cfg) -> dict:
    """`evaluate` with the knobs of the `eval` params section, then the sampler's `close()` when it has one."""
    try:
        return evaluate(sampler, items, k=int(eval_cfg["k"]), temperature=float(eval_cfg["temperature"]),
                        top_p=float(eval_cfg["top_p"]), max_new_tokens=int(eval_cfg["max_new_tokens"]),
                        seed=int(eval_cfg["seed"]))
    finally:
        getattr(sampler, "close", lambda: None)()


def heldout_items(cfg, tokenizer=None) -> list:
    """The fixed held-out problems of the config's task: the arithmetic split, or (`task.kind: math`) the problems
    of the `math` section, prompts through `tokenizer`'s chat template (`runs.heldout_items` passes the run's)."""
    if cfg.task.kind == "math":
        from helpers.lib import math_tasks

        if tokenizer is None:
            raise ValueError(f"{cfg.source}: the math task's held-out prompts need the run's tokenizer "
                             f"(helpers.lib.runs.heldout_items(cfg) passes it)")
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
    def of(cls, res: Mapping, key: str = "per_item") -> "PerItem":
        """The per-item scores `key` of an `evaluate` dict."""
        return cls(np.asarray(res[key], dtype=np.float64))

    @staticmethod
    def scores(cell) -> np.ndarray:
        """A table cell of per-item scores (a `PerItem`, or a plain list as read back from JSON) as float64."""
        return np.asarray(cell.values if isinstance(cell, PerItem) else cell, dtype=np.float64)


class CachedScorer:
    """Held-out scores (`evaluate` with the `eval` section's knobs) of models on the first `n_items` problems of
    `heldout` (all when falsy; `runs.heldout_items(cfg)`), each cached on disk under `outputs/cache/scores-<hash>/scores.json` keyed
    by what identifies the model + items, task, math, eval and device settings (so a re-run does not evaluate again).

    `score(identity, make)` scores any sampler `make()` builds; `checkpoint(path)` a model directory with the
    `eval.backend` sampler. Subclasses add other kinds of models (helpers.lib.extrapolation)."""

    def __init__(self, cfg, heldout: Sequence, n_items: int | None = None):
        self.items = heldout[:n_items] if n_items else heldout
        self.cfg, self.k = cfg, int(cfg.eval.k)
        self.metric = f"avg@{self.k}"
        self._memo: dict[str, dict] = {}

    def sampler_kwargs(self) -> dict:
        return {"device": self.cfg.device, "batch_size": int(self.cfg.eval.batch_size),
                "allow_pickle": bool(self.cfg.trajectory.allow_pickle)}

    def score(self, identity: Mapping, make: Callable[[], Sampler]) -> dict:
        """The `evaluate` dict of the sampler `make()` builds, from the cache when `identity` was scored before."""
        import json

        from helpers.lib.cache import cache_dir
        from helpers.lib.paths import atomic_write_json
        from helpers.lib.training import cpu_threads

        made_from = {**identity, "items": len(self.items),
                     **{k: self.cfg.get(k) for k in ("task", "math", "eval", "device")}}
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
        from helpers.lib.cache import dir_fingerprint

        return self.score({"checkpoint": dir_fingerprint(path)},
                          lambda: make_sampler(self.cfg.eval.backend, path, **self.sampler_kwargs()))

    def accuracy(self, path: str | Path) -> float:
        """avg@k of one model directory (whatever a subclass's `checkpoint` reports)."""
        return float(CachedScorer.checkpoint(self, path)[self.metric])


def evaluate_checkpoints(paths: Mapping[Any, str | Path], cfg, items: Sequence[tasks.Item] | None = None,
                         backend: str | None = None):
    """`evaluate_model` of each model directory in `paths` (label -> dir) on the held-out items; a DataFrame, one row
    per label."""
    import pandas as pd

    items = heldout_items(cfg) if items is None else items
    rows = {label: evaluate_model(path, items, cfg.eval, device=cfg.device, backend=backend,
                                  allow_pickle=cfg.trajectory.allow_pickle)
            for label, path in paths.items()}
    return pd.DataFrame.from_dict(rows, orient="index")
