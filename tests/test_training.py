"""Training: a micro embedded trajectory is a complete TRL-layout run, deterministic for a seed, and cached."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers.experiments.training_log import read_log
from helpers.lib import config, tasks, training
from helpers.lib.trajectory import Trajectory

pytestmark = pytest.mark.slow  # trains models / executes notebooks: left out of `make test-fast`

MICRO = {
    "model.hidden_size": 64,
    "model.heads": 2,
    "model.kv_heads": 1,
    "model.layers": 1,
    "model.intermediate_size": 64,
    "model.max_positions": 32,
    "task.train_size": 64,
    "task.heldout_size": 8,
    "sft.base_steps": 3,
    "sft.batch": 8,
    "rl.steps": 2,
    "rl.save_every": 1,
    "rl.batch": 2,
    "rl.rollouts": 2,
    "rl.max_completion_length": 6,
    "eval.heldout_during_training": 8,
    "eval.max_new_tokens": 6,
    "eval.k": 2,
    "device": "cpu",
}


def micro_cfg(**extra):
    return config.load("params/default.yaml", profile="default", overrides={**MICRO, **extra})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same micro config built twice, in two separate output roots. The untrained micro model never answers
    right, so the reward is replaced by one that varies within a group (odd completion length), giving RL a gradient."""
    cfg = micro_cfg()
    runs = []
    mp = pytest.MonkeyPatch()
    mp.setattr(tasks, "reward", lambda prompts, completions, **kw: [float(len(c) % 2) for c in completions])
    for name in ("a", "b"):
        mp.setenv("RLVR_OUTPUTS", str(tmp_path_factory.mktemp(name)))
        runs.append(training.embedded_trajectory(cfg))
    mp.undo()
    return cfg, runs


def test_layout_and_log(two_runs):
    _, (run, _) = two_runs
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0", "checkpoint-1", "checkpoint-2"]
    for ck in run.glob("checkpoint-*"):
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in ck.iterdir()}
        assert not (ck / "optimizer.pt").exists()
    traj = Trajectory(run)
    assert traj.steps == [0, 1, 2] and traj.tied_embeddings
    log = read_log(run)
    assert list(log.columns) == training.LOG_COLUMNS and list(log["step"]) == [0, 1, 2]
    assert log["heldout_accuracy"].notna().all() and log["reward"].iloc[1:].notna().all()
    assert json.loads((run / "build.json").read_text())["seconds"] > 0


def test_log_falls_back_to_trainer_state(two_runs, tmp_path):
    _, (run, _) = two_runs
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "log.csv").unlink()
    log = read_log(copy)
    assert list(log["step"]) == [1, 2] and log["reward"].notna().all()
    (copy / "checkpoint-2" / "trainer_state.json").unlink()
    (copy / "checkpoint-1" / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="no log.csv"):
        read_log(copy)
    assert read_log(copy, required=False).empty


def test_same_seed_same_weights(two_runs):
    _, (a, b) = two_runs
    for step in (0, 2):
        wa = load_file(a / f"checkpoint-{step}" / "model.safetensors")
        wb = load_file(b / f"checkpoint-{step}" / "model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    w0 = load_file(a / "checkpoint-0" / "model.safetensors")
    w2 = load_file(a / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)  # RL moved the weights


def test_cached_build_is_reused(two_runs, monkeypatch):
    cfg, (a, _) = two_runs
    monkeypatch.setenv("RLVR_OUTPUTS", str(a.parents[1]))
    monkeypatch.setattr(training, "train_rl", lambda *a, **k: pytest.fail("rebuilt a cached trajectory"))
    assert training.embedded_trajectory(cfg) == a


def test_sft_run_shares_layout_and_takes_loss_and_callbacks(two_runs, tmp_path):
    from transformers import TrainerCallback

    cfg, (run, _) = two_runs
    seen, losses = [], []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(state.global_step)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits[:, :-1].float()
        out = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        losses.append(float(out.detach()))
        return out

    out = training.train_sft(
        cfg,
        run / "checkpoint-0",
        tmp_path / "sft",
        steps=cfg.rl.steps,
        save_every=cfg.rl.save_every,
        compute_loss_func=loss,
        callbacks=[Count()],
    )
    assert seen == [1, 2] and len(losses) == 2
    assert Trajectory(out).steps == [0, 1, 2]
    assert read_log(out)["loss"].iloc[1:].tolist() == pytest.approx(losses)


@pytest.mark.parametrize("algorithm,optimizer", [("grpo", "adamw"), ("gspo", "sgd"), ("reinforce++", "adamw")])
def test_algorithm_registry_builds_trl_configs(algorithm, optimizer, tmp_path):
    args = training.rl_args(micro_cfg(**{"rl.algorithm": algorithm, "rl.optimizer": optimizer}), tmp_path)
    assert args.beta == 0.0 and (args.epsilon, args.epsilon_high) == (0.2, 0.28)
    assert args.per_device_train_batch_size == 2 * 2 and args.num_generations == 2 and args.save_only_model
    assert args.importance_sampling_level == ("sequence" if algorithm == "gspo" else "token")
    assert args.scale_rewards == ("batch" if algorithm == "reinforce++" else "group")
    assert args.loss_type == ("grpo" if algorithm == "gspo" else "dapo")
    assert args.optim.value == {"adamw": "adamw_torch", "sgd": "sgd"}[optimizer]


def test_unknown_algorithm_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match=r"rl\.algorithm must be grpo, gspo or reinforce\+\+, not 'ppo'"):
        micro_cfg(**{"rl.algorithm": "ppo"})


def test_math_task_trains_a_real_base_on_its_problems_and_verifier(tmp_path, monkeypatch):
    """task.kind math: RL starts from trajectory.base, trains on math.train_dataset and is rewarded by math-verify
    (math_tasks.reward); SFT learns the dataset's solutions; what is missing is named."""
    from helpers.lib import math_tasks, tiny

    base = tiny.init_model(micro_cfg().model, 0, tmp_path / "base")
    rows = [
        {"problem": f"{a}+{b}", "answer": str(a + b), "solution": f"\\boxed{{{a + b}}}"}
        for a in range(4)
        for b in range(4)
    ]
    for name, part in (("train", rows[:12]), ("test", rows[12:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    math = {
        "task.kind": "math",
        "math.dataset": str(tmp_path / "test.jsonl"),
        "trajectory.base": str(base),
        "model.max_positions": 128,
        "eval.heldout_during_training": 4,
    }
    cfg = micro_cfg(**math, **{"math.train_dataset": str(tmp_path / "train.jsonl")})
    seen, real = [], math_tasks.reward
    monkeypatch.setattr(
        math_tasks,
        "reward",
        lambda prompts, completions, answer, **kw: seen.append((prompts, answer)) or real(prompts, completions, answer),
    )
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "out"))

    assert training.base_model(cfg) == base
    run = training.embedded_trajectory(cfg)
    assert Trajectory(run).steps == [0, 1, 2]
    assert torch.equal(
        load_file(run / "checkpoint-0" / "model.safetensors")["model.embed_tokens.weight"],
        load_file(base / "model.safetensors")["model.embed_tokens.weight"],
    )
    train_prompts = {r["problem"] + math_tasks.INSTRUCTION: r["answer"] for r in rows[:12]}
    assert seen and all(train_prompts[p] == a for prompts, answers in seen for p, a in zip(prompts, answers))
    assert read_log(run)["heldout_accuracy"].notna().all()

    sft = training.train_sft(cfg, base, tmp_path / "sft", steps=1, save_every=1)
    assert Trajectory(sft).steps == [0, 1]

    with pytest.raises(math_tasks.DatasetError, match="math.train_dataset"):
        training.train_rl(micro_cfg(**math), tmp_path / "no-train")
    with pytest.raises(ValueError, match="set trajectory.base"):
        training.base_model(micro_cfg(**{"task.kind": "math"}))
    no_solutions = tmp_path / "bare.jsonl"
    no_solutions.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="SFT needs a worked solution"):
        training.train_sft(
            micro_cfg(**math, **{"math.train_dataset": str(no_solutions)}), base, tmp_path / "s2", steps=2, save_every=1
        )


def test_rl_args_pass_use_vllm(tmp_path):
    assert not training.rl_args(micro_cfg(), tmp_path).use_vllm
    args = training.rl_args(micro_cfg(**{"rl.use_vllm": True}), tmp_path)
    assert args.use_vllm and args.vllm_mode == "colocate"


def test_in_processes_keeps_the_order_of_calls():
    import math

    assert training.in_processes(math.pow, [(2, 3), (3, 2), (5, 0)], workers=2) == [8.0, 9.0, 1.0]
    assert training.in_processes(math.pow, [(2, 1)], workers=2) == [2.0]


def test_training_refuses_a_pickle_only_base_unless_allowed(tmp_path):
    from test_scoring import pickle_only_model

    base = pickle_only_model(tmp_path / "base")
    with pytest.raises(ValueError, match=rf"{base}: only pickle weights.*trajectory.allow_pickle"):
        training.train_sft(micro_cfg(), base, tmp_path / "sft", steps=1, save_every=0)
    with pytest.raises(ValueError, match=rf"{base}: only pickle weights.*trajectory.allow_pickle"):
        training.train_rl(micro_cfg(), tmp_path / "rl", base_dir=base)
    assert not (tmp_path / "sft").exists() and not (tmp_path / "rl").exists()
