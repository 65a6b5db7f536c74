"""Real math word problems (MATH-500, AIME24/25, DeepScaleR): the reference prompt, the last ``\\boxed{}`` answer and
checking with `math-verify`.

    items = load_items("data/aime24.jsonl", tokenizer=tok)      # local JSONL / JSON / parquet, or a hub dataset id
    scoring.evaluate(sampler, items, k=64, temperature=0.6, top_p=0.95, max_new_tokens=32768)

A `MathItem` carries its own verifier (`item.is_correct(completion)`), like the arithmetic task's `tasks.Item`, so
`scoring.evaluate` scores either. The prompt is the problem + `INSTRUCTION`, through the tokenizer's chat template
when it has one. The answer is the content of the completion's last ``\\boxed{...}`` (nested braces balanced); it is
checked against the gold answer with `math_verify` — gold first: ``verify(parse(gold), parse(pred))``.

math-verify bounds its parsing and comparison time with SIGALRM, which only works in the main thread; called from any
other thread (a thread pool, a reward worker) the checker runs without that time limit instead of failing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
PROBLEM_FIELDS = ("problem", "Problem", "question")  # tried in this order when the field is "auto"
ANSWER_FIELDS = ("answer", "Answer")
SOLUTION_FIELDS = ("solution", "Solution")  # worked solutions, when a dataset has them (SFT runs)
TIMEOUT_SECONDS = 5  # math-verify's per-parse / per-comparison limit (main thread)
_BOXES = ("\\boxed", "\\fbox")


@dataclass(frozen=True)
class MathItem:
    """One problem: the prompt the model sees, the gold answer (LaTeX or plain), the raw problem text, and the
    worked solution when the dataset has one (SFT trains on it)."""

    prompt: str
    answer: str
    problem: str
    solution: str | None = None

    def is_correct(self, completion: str) -> bool:
        return is_correct(completion, self.answer)


def format_prompt(problem: str, tokenizer=None) -> str:
    """problem + INSTRUCTION, as the user turn of the tokenizer's chat template (with the generation prompt) when the
    tokenizer has a template; the bare text otherwise."""
    text = problem + INSTRUCTION
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`, braces balanced; None when there is none
    or the last one is not closed (a truncated completion)."""
    start = max(text.rfind(b + "{") for b in _BOXES)
    if start < 0:
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def verify_answer(gold: str, pred: str) -> bool:
    """math-verify's verdict on `pred` against `gold` (both LaTeX or plain answers, no ``\\boxed``). The SIGALRM time
    limit applies in the main thread only; elsewhere it is switched off (SIGALRM cannot be used there)."""
    from math_verify import parse, verify

    limit = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=limit)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=limit)
    return bool(g) and bool(p) and verify(g, p, timeout_seconds=limit)


def is_correct(completion: str, gold: Any) -> bool:
    """True when the last ``\\boxed{}`` of `completion` is equivalent to `gold`."""
    pred = last_boxed(completion)
    return pred is not None and pred != "" and verify_answer(str(gold), pred)


def reward(prompts: list, completions: list, answer: list, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion's last ``\\boxed{}`` matches the `answer` column, else 0.0.
    Conversational completions (lists of messages) are scored on their last message."""

    def text(c):
        return c[-1]["content"] if isinstance(c, list) else c

    return [float(is_correct(text(c), a)) for c, a in zip(completions, answer)]


# ---------------------------------------------------------------------------------------------------------------------
# Datasets


class DatasetError(ValueError):
    """A math dataset that cannot be read; the message names the source and what is wrong."""


def _read_local(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, list):
                raise DatasetError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except DatasetError:
        raise
    except (ValueError, OSError) as e:  # bad JSON, unreadable parquet
        raise DatasetError(f"{path}: cannot read ({e})") from e
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        from datasets import load_dataset

        return list(load_dataset(name, split=split))
    except Exception as e:  # no network, unknown name, unknown split: all end here
        raise DatasetError(
            f"{name}: not a local file, and loading it from the dataset hub failed ({type(e).__name__}: {e}). "
            f"Without a reachable hub, save the split as JSONL or parquet and point math.dataset at the file."
        ) from e


def _field(row: Mapping, wanted: str, candidates: Sequence[str], source: str, what: str) -> str:
    names = candidates if wanted == "auto" else (wanted,)
    for name in names:
        if name in row:
            return name
    raise DatasetError(
        f"{source}: no {what} field {' / '.join(names)} in its rows (fields: {', '.join(map(str, row))})"
    )


def read_rows(source: str | Path, split: str = "test") -> list[dict]:
    """Rows of a local .jsonl / .json / .parquet file, else of the hub dataset `source` (its `split`)."""
    from helpers.lib.paths import resolve

    path = resolve(source)
    if path.is_file():
        return _read_local(path)
    if path.exists() or str(source).endswith((".jsonl", ".json", ".parquet")):
        raise DatasetError(f"{path}: not a data file (expected a .jsonl, .json or .parquet file)")
    return _read_hub(str(source), split)


def make_items(
    rows: Iterable[Mapping],
    tokenizer=None,
    problem_field: str = "auto",
    answer_field: str = "auto",
    limit: int | None = None,
    source: str = "dataset",
) -> list[MathItem]:
    """MathItems of dataset rows (the first `limit`), the prompt templated with `tokenizer`."""
    rows = list(rows)[:limit] if limit else list(rows)
    if not rows:
        raise DatasetError(f"{source}: no rows")
    pf = _field(rows[0], problem_field, PROBLEM_FIELDS, source, "problem")
    af = _field(rows[0], answer_field, ANSWER_FIELDS, source, "answer")
    sf = next((f for f in SOLUTION_FIELDS if f in rows[0]), None)
    return [
        MathItem(
            format_prompt(str(r[pf]), tokenizer),
            str(r[af]).strip(),
            str(r[pf]),
            str(r[sf]) if sf and r.get(sf) is not None else None,
        )
        for r in rows
    ]


def load_items(
    source: str | Path,
    tokenizer=None,
    split: str = "test",
    problem_field: str = "auto",
    answer_field: str = "auto",
    limit: int | None = None,
) -> list[MathItem]:
    """MathItems of a local file or hub dataset (see `read_rows`, `make_items`)."""
    return make_items(read_rows(source, split), tokenizer, problem_field, answer_field, limit, str(source))


def train_from_config(cfg, tokenizer) -> list[MathItem]:
    """The training problems of RL / SFT runs on the math task: `math.train_dataset` (e.g. DeepScaleR-Preview as
    JSONL), its `train_split` and the first `train_limit` rows, same fields as `math.dataset`."""
    m = cfg.math
    if not m.train_dataset:
        raise DatasetError(
            f"{cfg.source}: training on task.kind 'math' needs math.train_dataset (the problems to "
            f"train on, e.g. DeepScaleR-Preview saved as JSONL)"
        )
    return load_items(
        m.train_dataset,
        tokenizer,
        str(m.train_split),
        str(m.problem_field),
        str(m.answer_field),
        int(m.train_limit) if m.train_limit else None,
    )


def from_config(cfg, tokenizer) -> list[MathItem]:
    """The problems the `math` section names; prompts templated with `tokenizer` (the run's: `runs.heldout_items`)."""
    m = cfg.math
    if not m.dataset:
        raise DatasetError(f"{cfg.source}: task.kind is 'math' but math.dataset is not set")
    return load_items(
        m.dataset, tokenizer, str(m.split), str(m.problem_field), str(m.answer_field), int(m.limit) if m.limit else None
    )
