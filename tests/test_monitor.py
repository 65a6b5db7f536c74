"""Linearity monitor: its window statistics equal a direct computation (synthetic snapshots) and notebook 01's R² on
the saved checkpoints (a micro GRPO run), its sketch respects the memory budget, its metrics reach the reporting
integrations' `on_log` and log.csv, it leaves training bit for bit unchanged, and a resumed run goes on with the same
window (that it imports without the notebook stack: tests/test_layers.py)."""

import contextlib
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainerCallback, TrainingArguments

from helpers.lib import config, linearity, monitor, tasks, training
from helpers.lib.monitor import METRICS, LinearityMonitor, window_stats
from helpers.lib.synthetic import R1_DISTILL_QWEN_1_5B, qwen2_shapes
from helpers.lib.trajectory import Trajectory
from tests.test_training import MICRO as TRAINING_MICRO


# ------------------------------------------------------------------------------------------------- without training
def direct(y: np.ndarray, steps, moved) -> dict:
    """The three statistics by plain numpy on the whole (W, K) window: SVD of the deltas, R² of the moved columns."""
    y = y.astype(np.float64)
    d = y[1:] - y[0]
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    v = vt[0] * np.sign(d[-1] @ vt[0])  # oriented so that the last snapshot's coefficient is ≥ 0
    last = y[-1] - y[-2]
    return {
        "weight_r2_median": float(np.median(linearity.r2(y[:, moved], steps))),
        "rank1_ev": float(s[0] ** 2 / (s**2).sum()),
        "cosine": float(last @ v / np.linalg.norm(last)),
    }


@pytest.mark.parametrize("block", [monitor.BLOCK, 700])
def test_window_stats_equal_a_direct_numpy_computation(monkeypatch, block):
    monkeypatch.setattr(monitor, "BLOCK", block)
    rng = np.random.default_rng(0)
    steps = [0, 12, 24, 36, 48, 60]
    k = 2500
    drift, bend = rng.normal(size=k), rng.normal(size=k)
    t = np.asarray(steps, dtype=float)[:, None] / 60
    y = rng.normal(size=k) + 1e-2 * (drift * t + 0.3 * bend * t**2) + 1e-3 * rng.normal(size=(6, k))
    y = y.astype(np.float32)
    y[:, :100] = y[0, :100]  # entries that never moved
    moved = linearity.moved_mask(y, torch.float32)
    assert not moved[:100].any() and moved[100:].all()
    got, want = window_stats(list(y), steps, moved), direct(y, steps, moved)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert 0.9 < got["rank1_ev"] < 1 and 0 < got["cosine"] < 1 and 0.5 < got["weight_r2_median"] < 1


def test_window_stats_of_a_straight_line_and_of_a_turn_back():
    base, direction = np.linspace(-1, 1, 500), np.cos(np.arange(500.0))
    line = [base + 0.01 * s * direction for s in range(4)]
    stats = window_stats(line, [0, 1, 2, 3], np.ones(500, dtype=bool))
    assert stats == pytest.approx({"weight_r2_median": 1.0, "rank1_ev": 1.0, "cosine": 1.0}, abs=1e-6)
    back = [*line[:3], line[1]]  # the last step returns: against the window's direction
    assert window_stats(back, [0, 1, 2, 3], np.ones(500, dtype=bool))["cosine"] < -0.5


def qwen2_numels() -> dict:
    """.weight sizes of a 1.5 B Qwen2 (DeepSeek-R1-Distill-Qwen-1.5B's shape), built on the meta device."""
    cfg = Qwen2Config(**R1_DISTILL_QWEN_1_5B)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    numels = {n: p.numel() for n, p in model.named_parameters() if n.endswith(".weight")}
    shapes = qwen2_shapes(cfg.to_dict())  # the synthetic trajectories' shapes agree with transformers'
    assert numels == {n: int(np.prod(s)) for n, s in shapes.items() if n.endswith(".weight")}
    return numels


def test_the_sketch_of_a_big_model_is_cut_to_the_budget():
    numels = qwen2_numels()
    assert sum(numels.values()) > 1.7e9
    m = LinearityMonitor(window=8, fraction=0.001, min_samples=1000, budget_mb=16)
    m.plan(numels)
    entries = sum(len(i) for i in m.index.values())
    assert monitor.sketch_bytes(entries, 8) <= 16 * 2**20 < monitor.sketch_bytes(entries * 1.01, 8)  # tight
    assert 0 < m.effective_fraction < 0.001
    assert all(len(m.index[n]) == max(1000, np.ceil(m.effective_fraction * k)) for n, k in numels.items())
    roomy = LinearityMonitor(window=8, fraction=0.001, min_samples=1000, budget_mb=256)
    roomy.plan(numels)
    assert roomy.effective_fraction == 0.001  # the default knobs fit as asked
    with pytest.raises(ValueError, match="min_samples = 1000 per tensor alone needs"):
        LinearityMonitor(window=8, min_samples=1000, budget_mb=1).plan(numels)


class Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(1000, 1000)
        self.b = torch.nn.Linear(1000, 500)
        self.norm = torch.nn.LayerNorm(500)


def fake_state(step: int):
    return SimpleNamespace(global_step=step, is_world_process_zero=True, log_history=[{"loss": 1.0, "step": step}])


def test_a_running_sketch_stays_within_the_budget_and_reports_the_windows(tmp_path):
    torch.manual_seed(0)
    model = Big()
    args = SimpleNamespace(report_to=[], output_dir=str(tmp_path))
    budget = 0.25  # MiB: 1.5 M weights at fraction 0.05 would need 75 k entries × (5 × 4 + 8) bytes = 2 MiB
    m = LinearityMonitor(every=2, window=5, fraction=0.05, min_samples=10, budget_mb=budget)
    m.on_train_begin(args, fake_state(0), None, model=model)
    assert set(m.index) == {"a.weight", "b.weight", "norm.weight"} and m.effective_fraction < 0.05
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    logs = {}
    for step in range(1, 21):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(1e-3 * direction[n])
        state = fake_state(step)
        m.on_step_end(args, state, None)
        assert m.nbytes <= budget * 2**20 and len(m.snapshots) <= 5
        logs = {"loss": 1.0}
        m.on_log(args, state, None, logs=logs)
        if step >= 4 and step % 2 == 0:
            assert logs.keys() == {"loss", *METRICS.values()} and state.log_history[-1].keys() > logs.keys()
        else:
            assert logs == {"loss": 1.0}
    assert list(m.steps) == [12, 14, 16, 18, 20] and [h["step"] for h in m.history] == list(range(4, 21, 2))
    assert m.history[-1] == pytest.approx({"step": 20, "weight_r2_median": 1, "rank1_ev": 1, "cosine": 1}, abs=1e-4)


def test_resuming_mid_window_goes_on_as_if_training_had_not_stopped(tmp_path):
    """A run saved at step 9 (mid-window: snapshots every 2) and resumed there reports the same windows as one that
    never stopped; a changed sample is refused, a missing file restarts the window."""
    args = SimpleNamespace(report_to=[], output_dir=str(tmp_path))
    knobs = {"every": 2, "window": 4, "fraction": 0.01, "min_samples": 20, "budget_mb": 4}
    torch.manual_seed(0)
    start = {n: p.detach().clone() for n, p in Big().named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in start.items()}

    def at(model, step):  # the weights of step `step`: a bent path, so the windows differ
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n] + 1e-3 * (step + 0.02 * step**2) * direction[n])

    def steps(m, model, first, last):
        for step in range(first, last + 1):
            at(model, step)
            m.on_step_end(args, fake_state(step), None)
            if step == 9:
                (tmp_path / "checkpoint-9").mkdir(exist_ok=True)
                m.on_save(args, fake_state(9), None)

    model = Big()
    at(model, 0)
    whole = LinearityMonitor(**knobs)
    whole.on_train_begin(args, fake_state(0), None, model=model)
    steps(whole, model, 1, 20)
    assert (tmp_path / "checkpoint-9" / monitor.WINDOW_FILE).is_file()

    resumed = LinearityMonitor(**knobs)
    at(model, 9)
    resumed.on_train_begin(args, fake_state(9), None, model=model)
    assert list(resumed.steps) == [2, 4, 6, 8]
    steps(resumed, model, 10, 20)
    assert resumed.history == whole.history[-len(resumed.history) :] and resumed.history[0]["step"] == 10

    with pytest.raises(ValueError, match="samples other entries"):
        LinearityMonitor(**{**knobs, "fraction": 0.02}).on_train_begin(args, fake_state(9), None, model=model)
    with pytest.warns(UserWarning, match="the window restarts here"):
        fresh = LinearityMonitor(**knobs, resume_from=tmp_path / "elsewhere")
        fresh.on_train_begin(args, fake_state(9), None, model=model)
    assert list(fresh.steps) == [9]


def test_attach_puts_the_metrics_before_every_integration(tmp_path):
    seen = []

    class Integration(TrainerCallback):  # stands for W&B / TensorBoard: added by report_to before user callbacks
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=Big(), args=args, callbacks=[Integration()])
    m = LinearityMonitor(every=1, window=3)
    assert m.attach(trainer) is trainer
    callbacks = trainer.callback_handler.callbacks
    assert isinstance(callbacks[0], monitor._Reporter) and callbacks[-1] is m
    m._pending = {"monitor/cosine": 0.5}
    trainer.state.log_history.append({"loss": 1.0, "step": 1})
    trainer.callback_handler.on_log(args, trainer.state, trainer.control, {"loss": 1.0})
    assert seen == [{"loss": 1.0, "monitor/cosine": 0.5}] and trainer.state.log_history[-1]["monitor/cosine"] == 0.5
    assert not m._pending  # reported once


def test_from_config_reads_the_monitor_section():
    cfg = config.load("params/default.yaml", "default")
    m = LinearityMonitor.from_config(cfg)
    assert (m.every, m.window, m.fraction, m.min_samples, m.budget_mb, m.seed) == (12, 8, 0.001, 1000, 256, cfg.seed)
    with pytest.raises(config.ConfigError, match="monitor.window"):
        config.derive(cfg, {"monitor.window": 2})


# --------------------------------------------------------------------------------------------------- micro GRPO runs
MICRO = {**TRAINING_MICRO, "rl.steps": 6, "rl.save_every": 2}
KNOBS = {"every": 2, "window": 3, "fraction": 0.02, "min_samples": 50, "budget_mb": 16}


@contextlib.contextmanager
def micro_grpo(out, overrides):
    """(config, base model, monkeypatch) of micro GRPO runs under `out`. The untrained micro model never answers
    right, so the reward is replaced by one that varies within a group (odd completion length), giving RL a
    gradient."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLVR_OUTPUTS", str(out / "outputs"))
        mp.setattr(tasks, "reward", lambda prompts, completions, **kw: [float(len(c) % 2) for c in completions])
        cfg = config.load("params/default.yaml", "default", overrides)
        yield cfg, training.base_model(cfg), mp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same micro GRPO run with and without the monitor (snapshots at the checkpoint steps)."""
    out = tmp_path_factory.mktemp("monitor")
    with micro_grpo(out, MICRO) as (cfg, base, _):
        m = LinearityMonitor(**KNOBS, seed=cfg.seed)
        with_monitor = training.train_rl(cfg, out / "with", callbacks=[m], base_dir=base)
        without = training.train_rl(cfg, out / "without", base_dir=base)
    return m, with_monitor, without


@pytest.mark.slow
def test_the_monitor_only_reads(runs):
    _, a, b = runs
    moved = False
    for step in (2, 4, 6):
        wa = load_file(a / f"checkpoint-{step}" / "model.safetensors")
        wb = load_file(b / f"checkpoint-{step}" / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        w0 = load_file(a / "checkpoint-0" / "model.safetensors")
        moved |= any(not torch.equal(wa[k], w0[k]) for k in wa)
    assert moved


@pytest.mark.slow
def test_window_r2_equals_notebook_01s_on_the_checkpoints(runs):
    m, run, _ = runs
    traj = Trajectory(run)
    assert traj.steps == [0, 2, 4, 6] and [h["step"] for h in m.history] == [4, 6]
    assert set(m.index) == {n for n in traj.names if n.endswith(".weight")}
    for n, idx in m.index.items():  # notebook 01's sample of every tensor
        assert torch.equal(idx, linearity.sample_index(n, traj.numel(n), 0.02, 50, seed=0))
    for h in m.history:
        rows = [traj.steps.index(s) for s in (h["step"] - 4, h["step"] - 2, h["step"])]
        steps = np.asarray([traj.steps[i] for i in rows], dtype=float)
        r2s, snaps = [], []
        for n in m.names:
            y = traj.series(n, m.index[n], dtype=torch.float32).numpy()[rows]
            keep = linearity.moved_mask(y, traj.dtype(n))
            r2s.append(linearity.r2(y[:, keep], steps))
            snaps.append(y)
        assert h["weight_r2_median"] == pytest.approx(np.median(np.concatenate(r2s)), rel=1e-12)
        y = np.concatenate(snaps, axis=1)
        assert {k: h[k] for k in ("rank1_ev", "cosine")} == pytest.approx(
            {k: v for k, v in direct(y, steps, np.ones(y.shape[1], bool)).items() if k != "weight_r2_median"}, rel=1e-9
        )


@pytest.mark.slow
def test_metrics_reach_log_csv_and_the_trainer_state(runs):
    m, run, _ = runs
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert list(rows[0]) == training.LOG_COLUMNS + list(METRICS.values())
    by_step = {int(r["step"]): r for r in rows}
    for h in m.history:
        assert all(float(by_step[h["step"]][METRICS[k]]) == pytest.approx(h[k]) for k in METRICS)
    assert all(by_step[s]["monitor/cosine"] == "" for s in (0, 1, 2, 3, 5))
    history = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e for e in history if "monitor/rank1_ev" in e}
    assert sorted(logged) == [4, 6] and logged[6]["monitor/rank1_ev"] == m.history[-1]["rank1_ev"]
