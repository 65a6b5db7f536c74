"""Sampler backend selection and the vllm backend's mapping onto vLLM, against a stand-in `vllm` module (the real engine
is checked by `make test-vllm`, tests_vllm/)."""

import random
import sys
import types

import numpy as np
import pytest
import torch

from helpers.lib import backends, config, math_tasks, runs, scoring, tasks, tiny, vllm_backend

TOKENIZER = tiny.make_tokenizer()


class FakeCompletion:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class FakeLLM:
    """Records what the sampler asks for; completion i of a prompt = the prompt's tokens reversed, i+1 times, + EOS."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.shut = kwargs, [], False
        random.seed(kwargs["seed"])  # like an in-process engine, which seeds the global RNGs
        np.random.seed(kwargs["seed"])
        torch.manual_seed(kwargs["seed"])
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.instances.append(self)

    def _shutdown(self):
        self.shut = True

    def get_tokenizer(self):
        return TOKENIZER

    def generate(self, inputs, params, use_tqdm):
        self.calls.append((inputs, params))
        eos = TOKENIZER.eos_token_id
        return [
            types.SimpleNamespace(
                outputs=[FakeCompletion(x["prompt_token_ids"][::-1] * (i + 1) + [eos]) for i in range(p.n)]
            )
            for x, p in zip(inputs, params)
        ]


class FakeParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    cleanups = []
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")
    parallel_state.cleanup_dist_env_and_memory = lambda: cleanups.append(True)
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams, mod.cleanups = FakeLLM, FakeParams, cleanups
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.distributed", types.ModuleType("vllm.distributed"))
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", parallel_state)
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    FakeLLM.instances.clear()
    return mod


def test_vllm_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as in the main environment, whatever is installed
    with pytest.raises(
        vllm_backend.BackendUnavailable,
        match=r"needs the vllm package.*pip install -e '\.\[gpu\]'"
        r".*make test-vllm.*eval\.backend: hf",
    ):
        backends.make_sampler("vllm", "some/dir")
    assert issubclass(vllm_backend.BackendUnavailable, ImportError)


def test_sampling_settings_map_one_to_one(fake_vllm):
    sampler = backends.make_sampler("vllm", "some/dir", device="cpu", batch_size=7, max_model_len=64)
    llm = sampler.llm
    assert llm.kwargs == {
        "model": "some/dir",
        "seed": 0,
        "dtype": "auto",
        "enforce_eager": True,
        "gpu_memory_utilization": 0.2,
        "max_model_len": 64,
    }
    out = sampler.generate(["12+7=", "3-1="], n=3, temperature=0.6, top_p=0.95, max_new_tokens=9, seed=5)
    inputs, params = llm.calls[-1]
    assert [x["prompt_token_ids"] for x in inputs] == [
        TOKENIZER("12+7=", add_special_tokens=False)["input_ids"],
        TOKENIZER("3-1=", add_special_tokens=False)["input_ids"],
    ]
    assert [vars(p) for p in params] == [
        dict(n=3, temperature=0.6, top_p=0.95, max_tokens=9, seed=5, detokenize=False),
        dict(n=3, temperature=0.6, top_p=0.95, max_tokens=9, seed=8, detokenize=False),
    ]  # seed + j·n: all distinct
    assert out == [["=7+21", "=7+21=7+21", "=7+21=7+21=7+21"], ["=1-3", "=1-3=1-3", "=1-3=1-3=1-3"]]  # EOS dropped


def test_greedy_asks_for_one_completion_and_repeats_it(fake_vllm):
    sampler = backends.make_sampler("vllm", "some/dir")
    assert sampler.generate(["1+2="], n=4, temperature=0.0, top_p=0.5, max_new_tokens=3) == [["=2+1"] * 4]
    assert vars(sampler.llm.calls[-1][1][0]) == dict(n=1, temperature=0.0, max_tokens=3, detokenize=False)


def test_engine_settings_environment_and_rng(fake_vllm, monkeypatch):
    from helpers.lib.paths import outputs_root

    torch.manual_seed(123)
    random.seed(123)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(123)
    sampler = backends.make_sampler("vllm", "m", seed=7, gpu_memory_utilization=0.5, enforce_eager=False)
    assert (torch.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])  # caller's RNG untouched
    assert sampler.llm.kwargs == {
        "model": "m",
        "seed": 7,
        "dtype": "auto",
        "enforce_eager": False,
        "gpu_memory_utilization": 0.5,
    }
    import os

    assert os.environ["VLLM_CACHE_ROOT"] == str(outputs_root() / "cache" / "vllm")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in-process engine without CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert backends.make_sampler("vllm", "m").llm.kwargs == {"model": "m", "seed": 0, "dtype": "auto"}  # GPU
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # a user's setting wins


def test_close_frees_the_engine_once(fake_vllm):
    with backends.make_sampler("vllm", "m") as sampler:
        llm = sampler.llm
        sampler.generate(["1="], max_new_tokens=2)
    assert llm.shut and sampler.llm is None and fake_vllm.cleanups == [True]
    sampler.close()  # idempotent
    assert fake_vllm.cleanups == [True]
    with pytest.raises(RuntimeError, match="after close"):
        sampler.generate(["1="])


def test_fp32_checkpoints_run_in_fp32(fake_vllm, tmp_path):
    """vLLM's dtype "auto" runs an fp32 checkpoint in half precision; the sampler keeps the stored precision."""
    fp32 = tiny.init_model(dict(config.load("params/default.yaml", "default").model, layers=1), 0, tmp_path / "m")
    assert backends.make_sampler("vllm", fp32).llm.kwargs["dtype"] == "float32"
    (tmp_path / "bf16").mkdir()
    (tmp_path / "bf16" / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    assert backends.make_sampler("vllm", tmp_path / "bf16").llm.kwargs["dtype"] == "auto"
    assert backends.make_sampler("vllm", fp32, dtype="bfloat16").llm.kwargs["dtype"] == "bfloat16"


def test_vllm_needs_a_model_directory(fake_vllm):
    with pytest.raises(TypeError, match="pass a model directory or hub id"):
        backends.make_sampler("vllm", object(), tokenizer=TOKENIZER)


def test_eval_backend_knob_selects_the_sampler_and_closes_it(fake_vllm):
    cfg = config.load("params/default.yaml", "default")
    assert cfg.eval.backend == "hf"  # the CPU default
    items = [tasks.Item("12+7=", 19, "19"), tasks.Item("3-1=", 2, "2")]
    ev = {**cfg.eval, "backend": "vllm", "k": 2}
    res = scoring.evaluate_model("m", items, ev)
    (llm,) = FakeLLM.instances
    assert llm.shut and [p.n for p in llm.calls[0][1]] == [2, 2] and res["avg@2"] == 0.0
    with pytest.raises(ValueError, match="unknown sampler backend 'nope'"):
        scoring.evaluate_model("m", items, {**ev, "backend": "nope"})


class Scripted:
    """A sampler that answers from a script: prompt -> list of completions (greedy = the first)."""

    def __init__(self, script):
        self.script = script

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed):
        return [self.script[p][:n] if temperature else self.script[p][:1] for p in prompts]


def test_evaluate_scores_math_items_with_their_own_verifier():
    items = math_tasks.make_items([{"problem": "half?", "answer": "\\frac{1}{2}"}, {"problem": "two?", "answer": "2"}])
    script = {
        items[0].prompt: ["\\boxed{0.5}", "\\boxed{2/4}", "1/2", "\\boxed{1}"],
        items[1].prompt: ["\\boxed{3}", "\\boxed{2}", "\\boxed{2}", "\\boxed{2.0}"],
    }
    res = scoring.evaluate(Scripted(script), items, k=4)
    assert res["avg@4"] == pytest.approx(5 / 8)
    assert res["pass@1"] == pytest.approx(5 / 8) and res["pass@4"] == 1.0
    assert res["greedy_accuracy"] == 0.5  # first completions: right, wrong


def test_heldout_items_follow_task_kind(tmp_path):
    cfg = config.load("params/default.yaml", "default")
    assert scoring.heldout_items(cfg) == tasks.split(cfg.task)[1]
    (tmp_path / "aime.jsonl").write_text('{"Problem": "p1", "Answer": 7}\n{"Problem": "p2", "Answer": 8}\n')
    tiny.init_model(dict(cfg.model, layers=1), 0, tmp_path / "run" / "checkpoint-0")
    cfg = config.load(
        "params/default.yaml",
        "default",
        {
            "task.kind": "math",
            "math.dataset": str(tmp_path / "aime.jsonl"),
            "math.limit": 1,
            "trajectory.dir": str(tmp_path / "run"),
        },
    )
    with pytest.raises(ValueError, match="need the run's tokenizer"):
        scoring.heldout_items(cfg)
    items = runs.heldout_items(cfg)
    assert [(it.problem, it.answer) for it in items] == [("p1", "7")]
    assert items[0].prompt == math_tasks.format_prompt("p1")  # the tiny tokenizer has no chat template
    with pytest.raises(ValueError, match="task.kind must be arithmetic or math, not 'code'"):
        scoring.heldout_items(config.load("params/default.yaml", "default", {"task.kind": "code"}))
    with pytest.raises(math_tasks.DatasetError, match="math.dataset is not set"):
        scoring.heldout_items(config.load("params/default.yaml", "default", {"task.kind": "math"}))
