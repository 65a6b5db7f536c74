"""Engines are released: a notebook that evaluates checkpoint after checkpoint in one process must not leak."""

import psutil

from helpers.lib import backends, config, training

GiB = 2**30


def test_closed_engines_give_their_memory_back():
    base = training.base_model(config.load("params/default.yaml", "default"))
    proc = psutil.Process()
    opened, closed = [], []
    for _ in range(3):
        with backends.make_sampler("vllm", base) as sampler:
            assert sampler.generate(["1+2="], n=1, temperature=0.0, max_new_tokens=4)[0][0]
            opened.append(proc.memory_info().rss)
        assert sampler.llm is None
        closed.append(proc.memory_info().rss)
    assert min(opened) - max(closed) > 1 * GiB, (opened, closed)  # each engine holds its KV cache (GBs) ...
    assert closed[-1] - closed[0] < 0.25 * GiB, (opened, closed)  # ... and gives it back when closed
