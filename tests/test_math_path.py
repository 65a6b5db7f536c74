"""The real-model path on CPU: every notebook runs through the batch runner on `task.kind: math` — a tiny model with
a printable-character tokenizer, SFT-taught to answer in `\\boxed{}`, as `trajectory.base`; JSONL problem files;
RL trained here with math-verify's reward."""

import json
import math
import string

import pytest
import yaml

from helpers.experiments.training_log import read_log
from helpers.lib import config, device, runs, tiny, training
from helpers.pipeline import batch

pytestmark = pytest.mark.slow  # trains models / executes notebooks: left out of `make test-fast`

PRINTABLE = "".join(ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")
SMALL = {
    "rl": {"steps": 8, "save_every": 2, "batch": 8, "rollouts": 4, "max_completion_length": 24, "lr": 3.0e-4},
    "eval": {"k": 4, "heldout_during_training": 8, "max_new_tokens": 24},
    "model": {"max_positions": 128},
    "adaptive": {"probe_prompts": 16},  # of the 36 training problems
}


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("math")
    rows = [
        {"problem": f"What is {a}+{b}?", "answer": str(a + b), "solution": f"{a}+{b}={a + b}, so \\boxed{{{a + b}}}"}
        for a in range(6)
        for b in range(6)
    ]
    (d / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[28:]))
    params = {
        **yaml.safe_load(open("params/default.yaml"))["profiles"]["smoke"],
        **SMALL,
        "name": "math-cpu",
        "task": {"kind": "math"},
        "trajectory": {"base": str(d / "base")},
        "math": {"dataset": str(d / "test.jsonl"), "train_dataset": str(d / "all.jsonl")},
    }
    (d / "math.yaml").write_text(yaml.safe_dump(params))
    cfg = config.load(d / "math.yaml", profile="default")
    init = tiny.init_model(cfg.model, 0, d / "init", alphabet=PRINTABLE)
    with device.cpu_threads():  # teach the answer format (the base then solves part of the problems)
        training.train_sft(
            config.derive(cfg, {"sft.lr": 3e-3, "sft.batch": 28}),
            init,
            d / "base",
            steps=150,
            save_every=0,
            save_final=True,
        )
    mp = pytest.MonkeyPatch()
    mp.setenv("RLVR_OUTPUTS", str(d / "out"))
    try:
        outcome = batch.run_batch(d / "math.yaml", profile="default", out=d / "out")[0]
        rl_run = runs.run_dir(cfg)  # cached by the batch: the RL run the notebooks analysed
    finally:
        mp.undo()
    return outcome, rl_run


def test_every_notebook_runs_on_the_math_task(math_run):
    outcome, _ = math_run
    assert outcome.error is None, outcome.error
    assert set(outcome.status.values()) == {"ran"} and len(outcome.status) >= 8


def test_the_math_run_had_a_reward_signal_and_was_measured(math_run):
    outcome, rl_run = math_run
    assert (rl_run / "checkpoint-0").is_dir()
    log = read_log(rl_run)
    assert log["reward"].dropna().std() > 0, f"{rl_run}: every reward equal, RL had no signal"
    res = {p.stem: json.loads(p.read_text()) for p in (outcome.dir / "results").glob("*.json")}
    assert math.isfinite(res["01_weight_linearity"]["weight_r2_median"])
    assert math.isfinite(res["02_output_linearity"]["token_r2_median"])
    assert math.isfinite(res["06_relex"]["rank1_explained_variance_median"])
