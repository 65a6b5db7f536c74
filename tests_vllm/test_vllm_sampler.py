"""The vllm backend on a real vLLM engine against the hf backend, on the embedded default's base model.

Opt-in tier: `make test-vllm` (its own environment .venv-vllm with vLLM's CPU build; not part of `make test`)."""

import numpy as np
import pytest

from helpers.lib import backends, config, scoring, training

CFG = config.load("params/default.yaml", "default")
EV = CFG.eval


@pytest.fixture(scope="module")
def base():
    return training.base_model(CFG)  # built once and cached under outputs/cache/ (shared with `make run`)


@pytest.fixture(scope="module")
def items():
    return scoring.heldout_items(CFG)


@pytest.fixture(scope="module")
def hf(base):
    return backends.make_sampler("hf", base, device="cpu", batch_size=int(EV.batch_size))


@pytest.fixture(scope="module")
def vllm(base):
    with backends.make_sampler("vllm", base) as sampler:
        yield sampler


def test_greedy_outputs_match_hf(hf, vllm, items):
    prompts = [it.prompt for it in items]
    a = hf.generate(prompts, n=1, temperature=0.0, max_new_tokens=int(EV.max_new_tokens))
    b = vllm.generate(prompts, n=1, temperature=0.0, max_new_tokens=int(EV.max_new_tokens))
    assert len(b) == len(prompts) == int(CFG.task.heldout_size)
    assert b == a, [(p, x, y) for p, x, y in zip(prompts, a, b) if x != y][:5]
    assert sum(it.is_correct(o[0]) for o, it in zip(b, items)) > 0.1 * len(items)  # a model that does something


def test_sampling_is_seeded_and_n_per_prompt(vllm, items):
    prompts = [it.prompt for it in items[:16]]
    kw = dict(n=4, temperature=1.0, top_p=1.0, max_new_tokens=int(EV.max_new_tokens))
    a, again, other = (vllm.generate(prompts, seed=s, **kw) for s in (0, 0, 1))
    assert a == again and a != other
    assert [len(row) for row in a] == [4] * 16
    assert sum(len(set(row)) > 1 for row in a) > 4  # the n samples of a prompt are not one sample repeated


def test_evaluate_agrees_with_hf(hf, vllm, items):
    """avg@k with the eval section's sampling settings: vLLM's and hf's random streams differ, so the per-problem
    accuracies agree only within sampling noise (paired over problems, 4 standard errors)."""
    kw = dict(
        k=int(EV.k),
        temperature=float(EV.temperature),
        top_p=float(EV.top_p),
        max_new_tokens=int(EV.max_new_tokens),
        seed=int(EV.seed),
    )
    prompts = [it.prompt for it in items]

    def per_item(sampler):
        rows = sampler.generate(
            prompts,
            n=kw["k"],
            temperature=kw["temperature"],
            top_p=kw["top_p"],
            max_new_tokens=kw["max_new_tokens"],
            seed=kw["seed"],
        )
        return np.array([np.mean([it.is_correct(c) for c in row]) for row, it in zip(rows, items)])

    d = per_item(vllm) - per_item(hf)
    assert abs(d.mean()) <= 4 * d.std(ddof=1) / np.sqrt(len(d)) + 1e-9, d.mean()
    res = scoring.evaluate(vllm, items, **kw)
    assert res["entropy"] is None and 0 < res[f"avg@{kw['k']}"] <= res[f"pass@{kw['k']}"] <= 1
