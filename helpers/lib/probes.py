"""Probes and teacher forcing (LIN §3.2): the base model's own sampled responses, re-scored by every checkpoint.

A probe is one prompt + one response the *base* model sampled for it. `Probes` keeps token ids, prompt lengths and
text, and is saved as JSONL (a `helpers.lib.cache` build keyed by base checkpoint + probe parameters). Teacher forcing
runs a checkpoint once over every probe (right padding, explicit position ids) and returns, for each response token,
the fp32 log-prob of the actual token and its raw logit, plus optionally hidden states at a fixed sample of positions
× dimensions.

Response tokens of all probes are laid out flat in probe order (`Probes.tokens()`); every per-token array here uses
that order. The forward pass itself (`forward`) is separate so callers can attach hooks to the model and reuse it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.lib import backends, tasks
from helpers.lib.cache import cached_build, dir_fingerprint, stable_hash
from helpers.lib.device import pick
from helpers.lib.paths import atomic_dir

PROBES_FILE = "probes.jsonl"
PROBES_VERSION = 1  # `cache` version of the probes (bump when how they are sampled changes)
META_FILE = "meta.json"


class ProbeError(ValueError):
    """A probes file is missing, malformed, or inconsistent."""


@dataclass
class Probes:
    """Prompt + response token sequences; response tokens are `input_ids[i][prompt_lens[i]:]`."""

    input_ids: list[list[int]]
    prompt_lens: list[int]
    prompt_index: list[int]  # which prompt each probe answers
    prompts: list[str]
    responses: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.input_ids)
        if not all(len(x) == n for x in (self.prompt_lens, self.prompt_index, self.prompts, self.responses)):
            raise ProbeError("probes: input_ids, prompt_lens, prompt_index, prompts, responses differ in length")
        for i, (ids, p) in enumerate(zip(self.input_ids, self.prompt_lens)):
            if not 1 <= p < len(ids):
                raise ProbeError(
                    f"probe {i}: prompt length {p} must be ≥ 1 and leave ≥ 1 response token "
                    f"(sequence length {len(ids)})"
                )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def response_lens(self) -> np.ndarray:
        return np.array([len(x) - p for x, p in zip(self.input_ids, self.prompt_lens)], dtype=np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.response_lens.sum())

    def offsets(self) -> np.ndarray:
        """Start of each probe's response tokens in the flat layout (length len(self) + 1)."""
        return np.concatenate([[0], np.cumsum(self.response_lens)])

    def sequence_ids(self) -> np.ndarray:
        """For each probe, the index of the first probe with the same token sequence (repeated samples share one)."""
        first: dict[tuple, int] = {}
        return np.array([first.setdefault(tuple(x), i) for i, x in enumerate(self.input_ids)], dtype=np.int64)

    @property
    def n_distinct(self) -> int:
        return len(np.unique(self.sequence_ids()))

    def tokens(self) -> dict[str, np.ndarray]:
        """One entry per response token (flat layout), as columns: probe, position in the sequence, token id, prompt
        index, and `sequence` (the first probe with the same token sequence)."""
        probe = np.repeat(np.arange(len(self)), self.response_lens)
        position = np.concatenate([np.arange(p, len(x)) for x, p in zip(self.input_ids, self.prompt_lens)])
        token = np.concatenate([np.asarray(x[p:]) for x, p in zip(self.input_ids, self.prompt_lens)])
        return {
            "probe": probe,
            "position": position,
            "token": token,
            "prompt": np.asarray(self.prompt_index)[probe],
            "sequence": self.sequence_ids()[probe],
        }

    def fingerprint(self) -> str:
        return stable_hash([self.input_ids, self.prompt_lens])

    def write(self, directory: str | Path) -> None:
        """Write `probes.jsonl` (one probe per line) + `meta.json` into the existing `directory`."""
        directory = Path(directory)
        with open(directory / PROBES_FILE, "w") as f:
            for i in range(len(self)):
                f.write(
                    json.dumps(
                        {
                            "prompt_index": self.prompt_index[i],
                            "prompt": self.prompts[i],
                            "response": self.responses[i],
                            "prompt_len": self.prompt_lens[i],
                            "input_ids": self.input_ids[i],
                        }
                    )
                    + "\n"
                )
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Probes:
        directory = Path(directory)
        path = directory / PROBES_FILE
        if not path.is_file():
            raise ProbeError(f"{path}: probes file not found")
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ProbeError(f"{path}:{n}: not valid JSON ({e})") from e
        keys = ("input_ids", "prompt_len", "prompt_index", "prompt", "response")
        for n, r in enumerate(rows, 1):
            if missing := [k for k in keys if k not in r]:
                raise ProbeError(f"{path}:{n}: missing {', '.join(missing)}")
        meta_path = directory / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        try:
            return cls(
                [r["input_ids"] for r in rows],
                [r["prompt_len"] for r in rows],
                [r["prompt_index"] for r in rows],
                [r["prompt"] for r in rows],
                [r["response"] for r in rows],
                meta,
            )
        except ProbeError as e:
            raise ProbeError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------------- building probes


def from_samples(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    max_new_tokens: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Probes:
    """Tokenise sampled responses (`responses[i]` = the samples for `prompts[i]`) into probes.

    Prompts and responses are encoded without special tokens, as the hf sampler encodes prompts. With
    `max_new_tokens`, a response shorter than that stopped on EOS, so EOS is appended (its log-prob is part of the
    behaviour being tracked). Empty responses are dropped.
    """
    eos = tokenizer.eos_token_id
    ids, plens, pidx, ptxt, rtxt = [], [], [], [], []
    for i, (prompt, samples) in enumerate(zip(prompts, responses)):
        p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        for resp in samples:
            r_ids = list(tokenizer(resp, add_special_tokens=False)["input_ids"])
            if max_new_tokens is not None and eos is not None and len(r_ids) < max_new_tokens:
                r_ids.append(eos)
            if not p_ids or not r_ids:
                continue
            ids.append(p_ids + r_ids)
            plens.append(len(p_ids))
            pidx.append(i)
            ptxt.append(prompt)
            rtxt.append(resp)
    return Probes(ids, plens, pidx, ptxt, rtxt, dict(meta or {}))


def cached(key: Mapping[str, Any], build, keep_in: str | Path | None = None) -> tuple[Probes, Path]:
    """The probes cached under `outputs/cache/probes-v<PROBES_VERSION>-<hash(key)>/`, built with `build()` on a miss.

    `key` must name everything the probes depend on (base checkpoint, prompts, sampling parameters, seed). A copy is
    kept in the directory `keep_in` (a run directory's `RunDir.probes`) so a run holds the exact probes its numbers
    were measured on.
    """

    def make(tmp: Path) -> None:
        probes = build()
        probes.meta = {**probes.meta, "key": dict(key)}
        probes.write(tmp)

    where = cached_build("probes", dict(key), make, PROBES_VERSION)
    if keep_in is not None:
        with atomic_dir(keep_in) as tmp:
            for name in (PROBES_FILE, META_FILE):
                shutil.copy2(where / name, tmp / name)
    return Probes.load(where), where


def for_run(cfg, traj, keep_in: str | Path | None = None, section: Mapping[str, Any] | None = None) -> Probes:
    """The probes of a run: the base model (`traj` step 0) sampled on the first `prompts` held-out task prompts.

    `section` (default `cfg.output_linearity`) gives prompts, samples_per_prompt, temperature, top_p, max_new_tokens;
    the seed is `cfg.seed`. Cached by base checkpoint + prompts + those parameters, a copy kept in `keep_in`.
    """
    o = cfg.output_linearity if section is None else section
    prompts = [it.prompt for it in tasks.split(cfg.task)[1][: int(o["prompts"])]]
    params = {k: o[k] for k in ("samples_per_prompt", "temperature", "top_p", "max_new_tokens")} | {"seed": cfg.seed}
    key = {"base": dir_fingerprint(traj.path(traj.steps[0])), "prompts": stable_hash(prompts), **params}

    def build() -> Probes:
        tokenizer = traj.load_tokenizer()
        model = traj.load_model(traj.steps[0], device=pick(cfg.device))
        sampler = backends.make_sampler("hf", model, tokenizer=tokenizer)
        responses = sampler.generate(
            prompts,
            n=int(o["samples_per_prompt"]),
            temperature=float(o["temperature"]),
            top_p=float(o["top_p"]),
            max_new_tokens=int(o["max_new_tokens"]),
            seed=int(cfg.seed),
        )
        return from_samples(tokenizer, prompts, responses, int(o["max_new_tokens"]), meta=params)

    return cached(key, build, keep_in)[0]


# --------------------------------------------------------------------------------------------------- teacher forcing


@dataclass
class Batch:
    """Right-padded probes; `rows, cols` are the positions whose next-token prediction is a response token."""

    probes: np.ndarray  # probe indices in this batch
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S)
    position_ids: torch.Tensor  # (B, S)
    rows: torch.Tensor  # (n,) batch row of each predicted response token
    cols: torch.Tensor  # (n,) predicting position (= token position - 1)
    targets: torch.Tensor  # (n,) the response token ids
    flat: torch.Tensor  # (n,) index of each token in the flat layout


def batches(probes: Probes, batch_size: int, device: torch.device | str = "cpu", pad_id: int = 0) -> Iterator[Batch]:
    """Batches of probes in length order (less padding), right-padded, with position ids from the attention mask."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    lengths = np.array([len(x) for x in probes.input_ids])
    order = np.argsort(lengths, kind="stable")
    offsets = probes.offsets()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        rows, cols, flat = [], [], []
        for r, i in enumerate(idx):
            seq, p = probes.input_ids[i], probes.prompt_lens[i]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            rows.append(np.full(len(seq) - p, r))
            cols.append(np.arange(p - 1, len(seq) - 1))
            flat.append(np.arange(offsets[i], offsets[i + 1]))
        rows_t, cols_t = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        yield Batch(
            idx,
            ids.to(device),
            mask.to(device),
            positions.to(device),
            rows_t.to(device),
            cols_t.to(device),
            ids[rows_t, cols_t + 1].to(device),
            torch.from_numpy(np.concatenate(flat)),
        )


def forward(
    model, probes: Probes, batch_size: int, hidden_states: bool = False, device: torch.device | str | None = None
) -> Iterator[tuple[Batch, Any]]:
    """Run the model's decoder over every probe batch, yielding (batch, decoder output) under `inference_mode`.

    The language-model head is not applied here (see `log_softmax_rows`): full-vocabulary logits of every position
    would not fit for real vocabularies. Attach forward hooks to `model` before iterating to capture other tensors;
    `batch.rows, batch.cols` select the response positions.
    """
    device = device if device is not None else next(model.parameters()).device
    decoder = model.get_decoder()
    with torch.inference_mode():
        for batch in batches(probes, batch_size, device):
            out = decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                output_hidden_states=hidden_states,
                use_cache=False,
            )
            yield batch, out


def log_softmax_rows(model, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 log-softmax, raw logits) of the LM head applied to final hidden states `hidden` (n, d)."""
    logits = model.get_output_embeddings()(hidden).float()
    return torch.log_softmax(logits, dim=-1), logits


@dataclass
class Forced:
    """One checkpoint's teacher-forced outputs on the probes (flat layout)."""

    logprobs: np.ndarray  # (N,) fp32 log-prob of each response token
    logits: np.ndarray  # (N,) its raw logit
    hidden: np.ndarray | None  # (L+1, P, D) hidden states at sampled positions × dims (embeddings first)


def teacher_force(
    model, probes: Probes, batch_size: int = 8, hidden_index: tuple | None = None, chunk: int = 1024
) -> Forced:
    """Teacher-force one model over the probes.

    `hidden_index = (positions, dims)`: flat token indices (as in `Probes.tokens()`) and hidden dimensions whose hidden
    states to keep, at the position predicting that token, for every layer (`output_hidden_states`). The LM head runs
    on at most `chunk` rows at a time.
    """
    n = probes.n_tokens
    logprobs, logits = np.empty(n, np.float32), np.empty(n, np.float32)
    hidden = None
    if hidden_index is not None:
        positions, dims = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in hidden_index)
        slot = torch.full((n,), -1, dtype=torch.long)
        slot[positions] = torch.arange(len(positions))
    for batch, out in forward(model, probes, batch_size, hidden_states=hidden_index is not None):
        final = out.last_hidden_state[batch.rows, batch.cols]
        for s in range(0, len(final), chunk):
            lsm, raw = log_softmax_rows(model, final[s : s + chunk])
            tgt = batch.targets[s : s + chunk, None]
            where = batch.flat[s : s + chunk].numpy()
            logprobs[where] = lsm.gather(1, tgt)[:, 0].cpu().numpy()
            logits[where] = raw.gather(1, tgt)[:, 0].cpu().numpy()
        if hidden_index is not None:
            hs = out.hidden_states
            if hidden is None:
                hidden = np.empty((len(hs), len(positions), len(dims)), np.float32)
            keep = slot[batch.flat] >= 0
            if keep.any():
                r, c = batch.rows[keep.to(batch.rows.device)], batch.cols[keep.to(batch.cols.device)]
                dst = slot[batch.flat][keep].numpy()
                d = dims.to(hs[0].device)
                for layer, h in enumerate(hs):
                    hidden[layer, dst] = h[r, c][:, d].float().cpu().numpy()
    return Forced(logprobs, logits, hidden)


def activation_index(probes: Probes, hidden_size: int, positions: int, dims: int, seed: int) -> tuple:
    """A fixed random sample (seeded) of flat token positions and hidden dimensions for activation statistics."""
    g = np.random.default_rng(seed)
    pos = np.sort(g.choice(probes.n_tokens, size=min(positions, probes.n_tokens), replace=False))
    dim = np.sort(g.choice(hidden_size, size=min(dims, hidden_size), replace=False))
    return pos, dim


@dataclass
class TrajectoryForced:
    """Teacher-forced outputs of every checkpoint: arrays stacked over steps (axis 0)."""

    steps: np.ndarray  # (T,)
    logprobs: np.ndarray  # (T, N)
    logits: np.ndarray  # (T, N)
    hidden: np.ndarray | None  # (T, L+1, P, D)
    hidden_index: tuple | None  # (positions, dims) of `hidden`


def over_trajectory(
    traj,
    probes: Probes,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    activation_positions: int = 0,
    activation_dims: int = 0,
    seed: int = 0,
    steps: Sequence[int] | None = None,
) -> TrajectoryForced:
    """Teacher-force every checkpoint of `traj` (one model in memory at a time) over the probes."""
    steps = list(traj.steps if steps is None else steps)
    index = None
    per_step = []
    for step in tqdm(steps, desc="teacher forcing", unit="ckpt"):
        model = traj.load_model(step, dtype=torch.float32, device=device)
        if index is None and activation_positions > 0 and activation_dims > 0:
            index = activation_index(probes, model.config.hidden_size, activation_positions, activation_dims, seed)
        per_step.append(teacher_force(model, probes, batch_size, index))
        del model
    hidden = np.stack([f.hidden for f in per_step]) if index is not None else None
    return TrajectoryForced(
        np.asarray(steps),
        np.stack([f.logprobs for f in per_step]),
        np.stack([f.logits for f in per_step]),
        hidden,
        index,
    )
