"""The embedded task: multi-operand integer arithmetic with an exact, programmatic verifier.

A problem is a prompt such as ``"12+7-30="``; the completion is the integer answer (``"-11"``), optionally preceded by a
short worked chain of partial results (``"19-30=-11"``, with ``chain=True``). The verifier reads the integer after the
last ``=`` of the completion (the whole completion when it has none) and compares it exactly with the gold answer.

Train and held-out problems come from one seed; the held-out set is fixed and no held-out prompt appears in training.
A fraction `slip` of the train problems carry a flawed reference solution (the last operand forgotten, a classic slip),
so a model trained on them by SFT mixes a right and a wrong procedure — the headroom RL then removes. Rewards and
accuracy always use the true answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ALPHABET = "0123456789+-="  # every character a prompt or completion can contain
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Item:
    """One problem: the prompt the model sees, the gold integer, and the reference completion (for SFT)."""

    prompt: str
    answer: int
    solution: str

    def is_correct(self, completion: str) -> bool:
        """The item's verifier (every task's items have one; `scoring.evaluate` calls it)."""
        return is_correct(completion, self.answer)


def _solution(operands: list[int], ops: list[str], chain: bool) -> tuple[int, str]:
    total, steps = operands[0], []
    for op, x in zip(ops, operands[1:]):
        total = total + x if op == "+" else total - x
        steps.append(total)
    if not chain or len(steps) == 1:
        return total, str(total)
    # worked chain: replace the first two operands by their partial result, repeatedly
    parts = []
    for i in range(len(steps) - 1):
        rest = "".join(f"{o}{x}" for o, x in zip(ops[i + 1 :], operands[i + 2 :]))
        parts.append(f"{steps[i]}{rest}=")
    return total, "".join(parts) + str(total)


def make_item(rng: random.Random, operands: int, max_value: int, ops: str, chain: bool, slip: bool = False) -> Item:
    """A random problem; with `slip` its reference solution forgets the last operand (the answer stays true)."""
    xs = [rng.randrange(max_value) for _ in range(operands)]
    os_ = [rng.choice(ops) for _ in range(operands - 1)]
    prompt = str(xs[0]) + "".join(f"{o}{x}" for o, x in zip(os_, xs[1:])) + "="
    answer, solution = _solution(xs, os_, chain)
    if slip:
        solution = _solution(xs[:-1], os_[:-1], chain)[1]
    return Item(prompt, answer, solution)


def split(task: Mapping[str, Any]) -> tuple[list[Item], list[Item]]:
    """(train, held-out) items of the task section `task` (operands, max_value, ops, chain, slip, train_size,
    heldout_size, seed). Deterministic; held-out prompts are unique and never in train; held-out solutions are right."""
    rng = random.Random(int(task["seed"]))
    spec = (int(task["operands"]), int(task["max_value"]), str(task["ops"]), bool(task["chain"]))
    distinct = spec[1] ** spec[0] * len(set(spec[2])) ** (spec[0] - 1)
    if int(task["heldout_size"]) >= distinct:
        raise ValueError(
            f"task.heldout_size {task['heldout_size']} leaves no training problems: the task has only "
            f"{distinct} distinct problems"
        )
    heldout: dict[str, Item] = {}
    while len(heldout) < task["heldout_size"]:
        it = make_item(rng, *spec)
        heldout.setdefault(it.prompt, it)
    train, slip_rng = [], random.Random(int(task["seed"]) + 1)
    while len(train) < task["train_size"]:
        it = make_item(rng, *spec, slip=slip_rng.random() < float(task.get("slip", 0.0)))
        if it.prompt not in heldout:
            train.append(it)
    return train, list(heldout.values())


def parse_answer(completion: str) -> int | None:
    """The integer the completion ends with (after its last '='); None when malformed."""
    tail = completion.strip().rsplit("=", 1)[-1].strip()
    return int(tail) if _INT.fullmatch(tail) else None


def is_correct(completion: str, answer: int) -> bool:
    return parse_answer(completion) == int(answer)


def reward(prompts: list, completions: list, answer: list, **kwargs) -> list[float]:
    """TRL reward function: 1.0 for an exactly correct final integer, else 0.0 (TRL passes the `answer` column)."""
    return [float(is_correct(c, a)) for c, a in zip(completions, answer)]


def accuracy(completions: Iterable[str], answers: Iterable[int]) -> float:
    flags = [is_correct(c, a) for c, a in zip(completions, answers)]
    return sum(flags) / max(len(flags), 1)
