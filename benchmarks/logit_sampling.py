"""Benchmark: logit-extrapolated sampling (two models, two KV caches) against sampling from one model, on the same
prompts and settings, in one run. Reports the time ratio (limit 2×: two forward passes per token; target ≤ 2.2×).

    nice -n 10 .venv/bin/python benchmarks/logit_sampling.py [--models DIR_T0 DIR_T1] [--params params/default.yaml]
                                                              [--prompts 256] [--repeats 3] [--alpha 1.5] [--out F.json]

Prompts and sampling settings (k, temperature, top-p, max_new_tokens, batch size) come from the params file's `task` and
`eval` sections. Models: the two directories given, else two randomly initialised models of the params' `model`
section. Three variants are timed, interleaved, `--repeats` times each (the minimum counts): one model (θ_t1); the pair
with α = 1 (the very same samples, so the same work: the cost ratio) and the pair with α = --alpha.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def timed(sampler, prompts, ev) -> tuple[float, list[list[str]]]:
    t0 = time.perf_counter()
    out = sampler.generate(
        prompts,
        n=int(ev.k),
        temperature=float(ev.temperature),
        top_p=float(ev.top_p),
        max_new_tokens=int(ev.max_new_tokens),
        seed=int(ev.seed),
    )
    return time.perf_counter() - t0, out


def run(models: tuple[Path, Path], params: str, n_prompts: int, repeats: int, alpha: float) -> dict:
    import torch

    from helpers.lib import config, device, sampling, tasks
    from helpers.lib.logit_extrapolation import LogitExtrapolationSampler
    from helpers.lib.models import load_model

    cfg = config.load(params, profile="default")
    ev = cfg.eval
    prompts = [it.prompt for it in tasks.split(cfg.task)[1][:n_prompts]]
    (m0, tok), (m1, _) = (load_model(d, "cpu") for d in models)
    extra = f"pair, alpha={alpha:g}"
    samplers = {
        "one model": sampling.HFSampler(m1, tok, int(ev.batch_size)),
        "pair, alpha=1": LogitExtrapolationSampler(m0, m1, tok, 1.0, int(ev.batch_size)),
        extra: LogitExtrapolationSampler(m0, m1, tok, alpha, int(ev.batch_size)),
    }
    times: dict[str, list[float]] = {name: [] for name in samplers}
    outputs = {}
    with device.cpu_threads():
        threads = torch.get_num_threads()
        for _ in range(repeats):
            for name, sampler in samplers.items():
                seconds, outputs[name] = timed(sampler, prompts, ev)
                times[name].append(seconds)
    best = {name: min(t) for name, t in times.items()}
    chars = {name: sum(len(c) for row in out for c in row) for name, out in outputs.items()}
    per_char = {name: best[name] / max(chars[name], 1) for name in samplers}
    return {
        "sequences": len(prompts) * int(ev.k),
        "max_new_tokens": int(ev.max_new_tokens),
        "batch_size": int(ev.batch_size),
        "torch_threads": threads,
        "repeats": repeats,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "completion_chars": chars,
        "alpha1_reproduces_one_model": outputs["pair, alpha=1"] == outputs["one model"],
        "ratio_same_samples": round(best["pair, alpha=1"] / best["one model"], 3),
        f"ratio_alpha_{alpha:g}": round(best[extra] / best["one model"], 3),
        f"ratio_alpha_{alpha:g}_per_char": round(per_char[extra] / per_char["one model"], 3),
        "limit": 2.0,
        "target": 2.2,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs=2, type=Path, metavar=("DIR_T0", "DIR_T1"))
    p.add_argument("--params", default="params/default.yaml")
    p.add_argument("--prompts", type=int, default=256, help="held-out prompts (each sampled eval.k times)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--alpha", type=float, default=1.5)
    p.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        models = a.models
        if models is None:
            from helpers.lib import config, tiny

            spec = config.load(a.params, profile="default").model
            models = tuple(tiny.init_model(spec, seed, Path(tmp) / f"m{seed}") for seed in (0, 1))
        res = run(models, a.params, a.prompts, a.repeats, a.alpha)
    res["models"] = [str(m) for m in a.models] if a.models else "random init of the params' model section"
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
