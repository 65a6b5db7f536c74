"""Two-point weight extrapolation (LIN §4.2.2): W_{t'} = W_{t0} + β (W_{t1} − W_{t0}), β = (t' − t0) / (t1 − t0).

Computed tensor by tensor in fp32 with `torch.lerp` (exact at β = 0 and β = 1) and saved in the checkpoint's dtype;
only one tensor pair is in memory at a time. Norm policy:

- ``extrapolate``  — every tensor is extrapolated (ExPO);
- ``copy-from-t1`` — norm weights are copied from θ_{t1}, everything else (embeddings, lm_head, biases) is extrapolated
  (the paper's reference code).

A tied lm_head follows the extrapolated embedding. Command line::

    python -m helpers.lib.extrapolation --from A --to B --target-step T --out DIR [--norms extrapolate|copy-from-t1]
                                    [--from-step t0 --to-step t1] [--overwrite]

The steps of A and B come from their trainer_state.json or directory names unless given. `--overwrite` replaces only
an earlier extrapolation (a directory holding `extrapolation.json`), never an input or a directory holding one.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from helpers.lib import cli
from helpers.lib.checkpoint_io import write_checkpoint
from helpers.lib.trajectory import Trajectory, TrajectoryWarning, step_of

NORM_POLICIES = ("copy-from-t1", "extrapolate")
FP32_MAX = float(torch.finfo(torch.float32).max)  # the weights are extrapolated in float32
_NORM_MODULE = re.compile(r"(norm|^ln(_|$)|^ln\d)", re.IGNORECASE)


def coefficient(t0: float, t1: float, target_step: float) -> float:
    """β = (t' − t0) / (t1 − t0): the multiple of the observed update (β > 1 extrapolates)."""
    if t1 == t0:
        raise ValueError(f"extrapolation needs two different steps (both are {t0})")
    beta = (target_step - t0) / (t1 - t0)
    if not abs(beta) <= FP32_MAX:  # also NaN
        raise ValueError(
            f"β = {beta:g} (t0 = {t0}, t1 = {t1}, target step {target_step:g}) is beyond float32's range "
            f"(|β| ≤ {FP32_MAX:.3g}), in which the weights are extrapolated; choose a nearer target step"
        )
    return beta


def is_norm(name: str) -> bool:
    """A normalisation weight/bias (`input_layernorm.weight`, `model.norm.weight`, `q_norm`, GPT-2 `ln_f`, ...)."""
    parts = name.split(".")
    return len(parts) >= 2 and bool(_NORM_MODULE.search(parts[-2]))


def lerp(w0: torch.Tensor, w1: torch.Tensor, beta: float) -> torch.Tensor:
    """W_{t0} + β (W_{t1} − W_{t0}) in fp32, returned in W_{t1}'s dtype; β = 0 / 1 give the endpoints bit for bit."""
    if w0.shape != w1.shape:
        raise ValueError(f"shape mismatch {tuple(w0.shape)} vs {tuple(w1.shape)}")
    return torch.lerp(w0.to(torch.float32), w1.to(torch.float32), float(beta)).to(w1.dtype)


def extrapolated_tensors(
    traj, t0: int, t1: int, beta: float, norms: str = "copy-from-t1"
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the extrapolated checkpoint, one at a time, in the trajectory's canonical order."""
    if norms not in NORM_POLICIES:
        raise ValueError(f"norms: unknown policy {norms!r} (known: {', '.join(NORM_POLICIES)})")
    for name in traj.names:
        w1 = traj.tensor(name, t1)
        if not w1.is_floating_point() or (norms == "copy-from-t1" and is_norm(name)):
            yield name, w1
            continue
        try:
            yield name, lerp(traj.tensor(name, t0), w1, beta)
        except ValueError as e:
            raise ValueError(f"{traj.path(t0)} vs {traj.path(t1)}: tensor {name}: {e}") from None


def check_not_input(out: Path, traj) -> None:
    """`out` is none of `traj`'s checkpoints and holds none of them (e.g. the run directory): a ValueError if it is."""
    where = out.resolve()
    for step in traj.steps:
        ckpt = Path(traj.path(step)).resolve()
        if where == ckpt or where in ckpt.parents:
            what = "is the input checkpoint" if where == ckpt else f"holds the input checkpoint {ckpt}"
            raise ValueError(
                f"{out}: {what} (step {step}); an extrapolation is never written over its inputs, "
                "choose another output directory"
            )


def extrapolate(
    traj, t0: int, t1: int, target_step: float, out: str | Path, norms: str = "copy-from-t1", overwrite: bool = False
) -> Path:
    """Write the checkpoint extrapolated from steps t0, t1 of `traj` to `target_step` into `out` (atomically), with
    config and tokenizer of θ_{t1} and an `extrapolation.json` record of the inputs and β. An existing `out` is
    replaced only with `overwrite`, only if it is an earlier extrapolation, and never if it is or holds a checkpoint
    of `traj`."""
    check_not_input(Path(out), traj)
    beta = coefficient(t0, t1, target_step)
    record = {
        "method": "two-point weight extrapolation",
        "from": str(traj.path(t0)),
        "to": str(traj.path(t1)),
        "t0": t0,
        "t1": t1,
        "target_step": target_step,
        "beta": beta,
        "norms": norms,
        "tied_embeddings": bool(traj.tied_embeddings),
        "copied_from_t1": [n for n in traj.names if norms == "copy-from-t1" and is_norm(n)],
    }
    return write_checkpoint(
        out, extrapolated_tensors(traj, t0, t1, beta, norms), like=traj.path(t1), record=record, overwrite=overwrite
    )


def pair(src0: str | Path, src1: str | Path, t0: int | None = None, t1: int | None = None):
    """A two-checkpoint `Trajectory` of `src0`, `src1`; their steps are read from the directories (trainer_state.json /
    names) unless given. Returns (trajectory, t0, t1); warns when t0 > t1."""
    for src in (src0, src1):
        if not Path(src).is_dir():
            raise FileNotFoundError(f"{src}: no such checkpoint directory")
    t0 = step_of(src0) if t0 is None else int(t0)
    t1 = step_of(src1) if t1 is None else int(t1)
    if t0 == t1:
        raise ValueError(f"{src0} and {src1} are both at step {t0}; pass --from-step / --to-step")
    if t0 > t1:
        warnings.warn(
            f"--from {src0} (step {t0}) is newer than --to {src1} (step {t1}): t0 > t1, so config, tokenizer "
            "and copied norms come from the older checkpoint; swap --from and --to unless that is meant",
            TrajectoryWarning,
            stacklevel=2,
        )
    return Trajectory({t0: Path(src0), t1: Path(src1)}), t0, t1


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m helpers.lib.extrapolation", description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="src0", required=True, help="checkpoint directory at step t0")
    p.add_argument("--to", dest="src1", required=True, help="checkpoint directory at step t1")
    p.add_argument("--target-step", type=float, required=True, help="the step t' to extrapolate to")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--norms", choices=NORM_POLICIES, default="copy-from-t1", help="norm-weight policy")
    p.add_argument("--from-step", type=int, help="step of --from (default: read from the directory)")
    p.add_argument("--to-step", type=int, help="step of --to (default: read from the directory)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is an earlier extrapolation (never an input or a directory holding one)",
    )
    a = p.parse_args(argv)
    if Path(a.out).exists() and not a.overwrite:
        p.error(f"{a.out} exists; pass --overwrite to replace it")
    with warnings.catch_warnings(record=True) as caught:  # shown as one line each
        warnings.simplefilter("always")
        traj, t0, t1 = pair(a.src0, a.src1, a.from_step, a.to_step)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    target = int(a.target_step) if float(a.target_step).is_integer() else a.target_step
    out = extrapolate(traj, t0, t1, target, a.out, a.norms, overwrite=a.overwrite)
    print(f"wrote {out} (t0={t0}, t1={t1}, target={target}, beta={coefficient(t0, t1, target):.4g}, norms={a.norms})")
    return out


def cli_main() -> None:
    """The `rlvr-extrapolate` command."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
