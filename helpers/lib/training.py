"""Training of the embedded default: the SFT base model and the RLVR trajectory (TRL `GRPOTrainer`), on CPU in minutes.

    base = base_model(cfg)              # tiny model trained from scratch by SFT (cached)
    run = embedded_trajectory(cfg)      # RL run on it (cached): run/checkpoint-0 (= base), checkpoint-N, ..., log.csv

A run directory is a TRL layout: `checkpoint-<step>/` (model.safetensors, config, generation config, tokenizer,
trainer_state.json) every `save_every` steps, plus `checkpoint-0/` = the starting model, so the directory alone is a
complete trajectory, and `log.csv` with one row per optimizer step (columns `LOG_COLUMNS`; `heldout_accuracy` is the
greedy held-out accuracy, filled at step 0 and at every checkpoint). SFT runs (`train_sft`) share that layout, the
callbacks and the checkpointing; RL accepts extra `TrainerCallback`s.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from helpers.lib import models, scoring, tasks, tiny
from helpers.lib.cache import build_info, cached, cached_build, dir_fingerprint
from helpers.lib.device import cpu_threads, pick
from helpers.lib.paths import atomic_write_text, resolve

LOG_COLUMNS = [
    "step",
    "seconds",
    "loss",
    "grad_norm",
    "learning_rate",
    "reward",
    "reward_std",
    "entropy",
    "completion_length",
    "heldout_accuracy",
]
TRL_KEYS = {"completions/mean_length": "completion_length"}  # TRL log key -> log column

# RL algorithms as GRPOConfig keyword sets (beta=0 and the clip range come from the `rl` section). Token-level
# losses are averaged over all tokens of the batch (dapo, as verl's token-mean); GSPO averages per sequence.
ALGORITHMS: dict[str, dict[str, Any]] = {
    "grpo": {"importance_sampling_level": "token", "scale_rewards": "group", "loss_type": "dapo"},
    "gspo": {"importance_sampling_level": "sequence", "scale_rewards": "group", "loss_type": "grpo"},
    "reinforce++": {"importance_sampling_level": "token", "scale_rewards": "batch", "loss_type": "dapo"},
}
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
BASE_VERSION = 1  # `cache` versions of the SFT base and of the embedded RL run: bump when training changes
TRAJECTORY_VERSION = 1


class TrajectoryLog(TrainerCallback):
    """Per-step metrics to `log.csv`; greedy held-out accuracy of the model at step 0 and at every checkpoint."""

    def __init__(self, path: Path, heldout: Sequence, tokenizer, max_new_tokens: int, batch_size: int = 512):
        self.path, self.heldout, self.tokenizer = Path(path), list(heldout), tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.rows: dict[int, dict] = {}
        self.t0 = time.time()

    def _row(self, step: int) -> dict:
        return self.rows.setdefault(step, {"step": step})

    def _accuracy(self, model) -> float:
        was_training = model.training
        model.eval()
        acc = scoring.greedy_accuracy(model, self.tokenizer, self.heldout, self.max_new_tokens, self.batch_size)
        model.train(was_training)
        return acc

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.t0 = time.time()
        self._row(0).update(seconds=0.0, heldout_accuracy=self._accuracy(model))

    def on_log(self, args, state, control, logs=None, **kw):
        row = self._row(state.global_step)
        row["seconds"] = round(time.time() - self.t0, 3)
        for key, val in (logs or {}).items():
            col = TRL_KEYS.get(key, key)
            if col in LOG_COLUMNS and col != "step":
                row[col] = val

    def on_save(self, args, state, control, model=None, **kw):
        self._row(state.global_step)["heldout_accuracy"] = self._accuracy(model)
        self.write()

    def on_train_end(self, args, state, control, **kw):
        self.write()

    def write(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, LOG_COLUMNS, restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows[s] for s in sorted(self.rows))
        atomic_write_text(self.path, buf.getvalue())


def _trajectory_log(cfg, out_dir: Path, heldout: Sequence, tok) -> TrajectoryLog:
    """The log.csv callback of a run: greedy accuracy on the first `eval.heldout_during_training` held-out items."""
    return TrajectoryLog(
        out_dir / "log.csv",
        heldout[: int(cfg.eval.heldout_during_training)],
        tok,
        int(cfg.eval.max_new_tokens),
        int(cfg.eval.batch_size),
    )


def _common_args(
    out_dir: Path, *, steps: int, save_every: int, lr: float, optimizer: str, seed: int, device: str, batch: int
) -> dict:
    """TrainingArguments shared by SFT and RL: constant lr, one log row per step, light checkpoints."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} unknown (known: {', '.join(OPTIMIZERS)})")
    return dict(
        output_dir=str(out_dir),
        max_steps=int(steps),
        learning_rate=float(lr),
        optim=OPTIMIZERS[optimizer],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        logging_steps=1,
        save_strategy="steps" if save_every else "no",
        save_steps=int(save_every) if save_every else 500,
        save_only_model=True,
        seed=int(seed),
        data_seed=int(seed),
        report_to=[],
        disable_tqdm=True,
        use_cpu=pick(device).type == "cpu",
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
    )


def _start_dir(out_dir: Path, start: Path) -> None:
    """`out_dir/checkpoint-0` = a copy of the starting model, so the run directory is a complete trajectory."""
    shutil.copytree(
        start, out_dir / "checkpoint-0", ignore=shutil.ignore_patterns("log.csv", "build.json", "*.md", "init")
    )


def _fit(trainer) -> None:
    """Train quietly (metrics go to log.csv) with `cpu_threads`."""
    trainer.remove_callback(PrinterCallback)
    hf_logging.disable_progress_bar()
    with cpu_threads():
        trainer.train()


def _one_thread_call(fn: Callable, args: tuple):
    torch.set_num_threads(1)
    return fn(*args)


def in_processes(fn: Callable, arg_lists: Sequence[tuple], workers: int = 2) -> list:
    """[fn(*args) for args in arg_lists], each call in its own spawned process with one torch thread, `workers` at a
    time: two single-threaded trainings side by side use a 2-core machine best. With one call or `workers` ≤ 1 the
    calls run here, one after the other. `fn` must be importable (a module-level function)."""
    import concurrent.futures as futures
    import multiprocessing

    arg_lists = [tuple(a) for a in arg_lists]
    if len(arg_lists) <= 1 or workers <= 1:
        return [fn(*a) for a in arg_lists]
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(min(workers, len(arg_lists)), mp_context=ctx) as pool:
        return list(pool.map(_one_thread_call, [fn] * len(arg_lists), arg_lists))


def problems(cfg, tokenizer) -> tuple[list, list, Callable]:
    """(train problems, held-out problems, TRL reward function) of the config's task: the arithmetic split and
    `tasks.reward`, or on `task.kind: math` the `math.train_dataset` / `math.dataset` problems (prompts through the
    model's chat template) and `math_tasks.reward` (math-verify). Every item has `prompt`, `answer`, `is_correct`."""
    if cfg.task.kind == "math":
        from helpers.lib import math_tasks

        return (math_tasks.train_from_config(cfg, tokenizer), math_tasks.from_config(cfg, tokenizer), math_tasks.reward)
    train, heldout = tasks.split(cfg.task)
    return train, heldout, tasks.reward


def run_key(cfg, sections: Sequence[str]) -> dict:
    """What a trained run is cached by: these config sections, the seed and the device; on the math task also the
    `math` section and the starting model (`dir_fingerprint` of `trajectory.base`)."""
    key = {k: cfg[k] for k in sections} | {"seed": cfg.seed, "device": cfg.device}
    if "rl" in key:  # how many seeds a notebook trains is not a property of one run
        key["rl"] = {k: v for k, v in cfg.rl.items() if k != "seeds"}
    if cfg.task.kind == "math":
        key |= {"math": cfg.math, "base": dir_fingerprint(base_model(cfg))}
    return key


class _SFTCollator:
    """Prompt + reference completion + EOS; loss only on the completion (labels -100 on prompt and padding)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __call__(self, batch: list[dict]) -> dict:
        tok = self.tok
        seqs, labels = [], []
        for ex in batch:
            p = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(ex["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seqs.append(p + c)
            labels.append([-100] * len(p) + c)
        width = max(map(len, seqs))
        pad = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]  # noqa: E731
        ids = torch.tensor(pad(seqs, tok.pad_token_id))
        return {
            "input_ids": ids,
            "attention_mask": torch.tensor(pad([[1] * len(s) for s in seqs], 0)),
            "labels": torch.tensor(pad(labels, -100)),
        }


def train_sft(
    cfg,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    save_every: int,
    compute_loss_func: Callable | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    save_final: bool = False,
) -> Path:
    """Supervised fine-tuning of the model in `base_dir` on reference solutions of the train split, for `steps`
    steps with a checkpoint every `save_every` (0: none); lr, batch and optimizer come from the `sft` section (derive
    the config to change them, `config.derive`).

    `compute_loss_func(outputs, labels, num_items_in_batch)` replaces the loss (e.g. to inject noise). Writes the run
    layout (checkpoint-0 = base, checkpoint-N, log.csv) to `out_dir`; with `save_final` the final model is also saved
    at the top of `out_dir` as a plain model directory.
    """
    from datasets import Dataset

    out_dir, base_dir = Path(out_dir), Path(base_dir)
    steps, save_every = int(steps), int(save_every)
    model, tok = models.load_model(base_dir, cfg.device, allow_pickle=cfg.trajectory.allow_pickle)
    train, heldout, _ = problems(cfg, tok)
    unsolved = [it.prompt for it in train if getattr(it, "solution", None) is None]
    if unsolved:
        raise ValueError(
            f"{cfg.source}: SFT needs a worked solution for every training problem; {len(unsolved)} of "
            f"{len(train)} have none (math: give math.train_dataset a `solution` column)"
        )
    if save_every:
        _start_dir(out_dir, base_dir)
    args = TrainingArguments(
        **_common_args(
            out_dir,
            steps=steps,
            save_every=save_every,
            lr=cfg.sft.lr,
            optimizer=cfg.sft.optimizer,
            seed=cfg.seed,
            device=cfg.device,
            batch=int(cfg.sft.batch),
        ),
        remove_unused_columns=False,
    )
    data = Dataset.from_list([{"prompt": it.prompt, "solution": it.solution} for it in train])
    log = _trajectory_log(cfg, out_dir, heldout, tok)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=_SFTCollator(tok),
        processing_class=tok,
        compute_loss_func=compute_loss_func,
        callbacks=[log, *callbacks],
    )
    _fit(trainer)
    if save_final:
        trainer.save_model(str(out_dir))
    return out_dir


def rl_args(cfg, out_dir: str | Path):
    """The GRPOConfig of the `rl` section: one generation per optimizer step (`batch` prompts × `rollouts`
    completions), on-policy (num_iterations 1), no KL (beta 0)."""
    from trl import GRPOConfig

    rl = cfg.rl
    if rl.algorithm not in ALGORITHMS:
        raise ValueError(f"rl.algorithm: unknown algorithm {rl.algorithm!r} (known: {', '.join(ALGORITHMS)})")
    common = _common_args(
        Path(out_dir),
        steps=rl.steps,
        save_every=rl.save_every,
        lr=rl.lr,
        optimizer=rl.optimizer,
        seed=rl.seed,
        device=cfg.device,
        batch=int(rl.batch) * int(rl.rollouts),
    )
    return GRPOConfig(
        **common,
        **ALGORITHMS[rl.algorithm],
        num_generations=int(rl.rollouts),
        max_completion_length=int(rl.max_completion_length),
        temperature=float(rl.temperature),
        top_p=1.0,
        beta=0.0,
        epsilon=float(rl.epsilon),
        epsilon_high=float(rl.epsilon_high),
        num_iterations=1,
        log_completions=False,
        shuffle_dataset=True,
        use_vllm=bool(rl.use_vllm),
        vllm_mode="colocate",
    )


def train_rl(
    cfg, out_dir: str | Path, callbacks: Iterable[TrainerCallback] = (), base_dir: str | Path | None = None
) -> Path:
    """RLVR with TRL's GRPOTrainer on the task's training problems and verifier (`problems`), starting from
    `base_dir` (default: `base_model(cfg)`).

    The `rl` section picks the algorithm (`ALGORITHMS`), optimizer, lr, prompts per step (`batch`), `rollouts` per
    prompt, `steps`, `save_every`, clip range, temperature, completion length and whether vLLM generates the rollouts
    (`use_vllm`); beta is 0 (no KL, no reference model).
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    out_dir = Path(out_dir)
    args = rl_args(cfg, out_dir)
    base_dir = Path(base_dir) if base_dir is not None else base_model(cfg)
    model, tok = models.load_model(base_dir, cfg.device, allow_pickle=cfg.trajectory.allow_pickle)
    train, heldout, reward = problems(cfg, tok)
    _start_dir(out_dir, base_dir)
    data = Dataset.from_list([{"prompt": it.prompt, "answer": it.answer} for it in train])
    log = _trajectory_log(cfg, out_dir, heldout, tok)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[log, *callbacks],
    )
    _fit(trainer)
    return out_dir


def base_model(cfg) -> Path:
    """The model RL starts from. Arithmetic task: the SFT base (cached under outputs/cache/base-v<N>-<hash>/), a tiny
    model trained from scratch for `sft.base_steps` steps on reference solutions; `build.json` records its training
    time. Math task: the real model in `trajectory.base`."""
    if cfg.task.kind == "math":
        if not cfg.trajectory.base:
            raise ValueError(
                f"{cfg.source}: on task.kind 'math' training starts from a real model: set trajectory."
                f"base to its directory (the tiny SFT base exists for the arithmetic task only)"
            )
        base = resolve(cfg.trajectory.base)
        if not (base / "config.json").is_file():
            raise FileNotFoundError(f"{cfg.source}: trajectory.base {base} is not a model directory (no config.json)")
        return base

    def build(tmp: Path) -> None:
        hf_logging.disable_progress_bar()
        init = tiny.init_model(cfg.model, cfg.seed, tmp / "init")
        train_sft(cfg, init, tmp, steps=cfg.sft.base_steps, save_every=0, save_final=True)
        shutil.rmtree(init)

    return cached_build("base", _base_key(cfg), build, BASE_VERSION)


def embedded_trajectory(cfg) -> Path:
    """The default RL run (cached under outputs/cache/trajectory-v<N>-<hash>/), built on `base_model(cfg)`;
    `build.json` records its seconds and the base's (0 for a real base model)."""
    base = base_model(cfg)

    def build(tmp: Path) -> dict:
        train_rl(cfg, tmp, base_dir=base)
        return {"base_seconds": float(build_info(base).get("seconds", 0.0))}

    return cached_build("trajectory", _trajectory_key(cfg), build, TRAJECTORY_VERSION)


def _base_key(cfg) -> dict:
    return run_key(cfg, ("task", "model", "sft"))


def cached_base(cfg) -> Path | None:
    """The arithmetic task's SFT base of `cfg` when it is already built (`base_model` would not train), else None."""
    return cached("base", _base_key(cfg), BASE_VERSION)


def _trajectory_key(cfg) -> dict:
    return run_key(cfg, ("task", "model", "sft", "rl")) | {"eval": _logged_eval(cfg)}


def cached_trajectory(cfg) -> Path | None:
    """The default RL run of `cfg` when it is already built (`embedded_trajectory` would not train), else None."""
    return cached("trajectory", _trajectory_key(cfg), TRAJECTORY_VERSION)


def _logged_eval(cfg) -> dict:
    """The `eval` knobs a run's log depends on (other eval knobs, e.g. k, do not invalidate a cached run)."""
    return {k: cfg.eval[k] for k in ("heldout_during_training", "max_new_tokens")}
