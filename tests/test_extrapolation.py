import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers.lib import extrapolation as ex
from helpers.lib.trajectory import Trajectory

TINY = dict(
    hidden_size=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_hidden_layers=2,
    intermediate_size=96,
    vocab_size=40,
)
NORM = "model.layers.0.input_layernorm.weight"
BIAS = "model.layers.1.self_attn.q_proj.bias"
EMBED = "model.embed_tokens.weight"


pytestmark = pytest.mark.usefixtures("one_thread")


def checkpoint(path, step, tied=False, dtype=torch.float32, trainer_state=True):
    """A tiny Qwen2 moved by `step` × a fixed random direction (norms included), saved in `dtype`."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=tied, **TINY))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * step * torch.randn(p.shape, generator=g))
    model.to(dtype).save_pretrained(path)
    if trainer_state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def state(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    for step in (0, 10, 20):
        checkpoint(root / f"checkpoint-{step}", step, dtype=request.param)
    return root


def test_coefficient_and_norm_names():
    assert ex.coefficient(0, 300, 900) == 3.0 and ex.coefficient(200, 1400, 2000) == 0.5 + 1.0
    with pytest.raises(ValueError, match="two different steps"):
        ex.coefficient(5, 5, 9)
    norms = [
        "model.layers.3.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "model.layers.2.self_attn.q_norm.weight",
        "transformer.ln_f.bias",
        "h.0.ln_1.weight",
    ]
    others = [
        EMBED,
        "lm_head.weight",
        BIAS,
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
    ]
    assert all(map(ex.is_norm, norms)) and not any(map(ex.is_norm, others))


@pytest.mark.parametrize(
    "beta_step, norms, endpoint", [(10, "extrapolate", 10), (20, "extrapolate", 20), (20, "copy-from-t1", 20)]
)
def test_endpoints_bit_for_bit(run, tmp_path, beta_step, norms, endpoint):
    traj = Trajectory(run)
    out = ex.extrapolate(traj, 10, 20, beta_step, tmp_path / "out", norms)
    got, want = state(out), state(run / f"checkpoint-{endpoint}")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_extrapolated_values_load_and_record(run, tmp_path):
    traj = Trajectory(run)
    out = ex.extrapolate(traj, 10, 20, 40, tmp_path / "out", "copy-from-t1")  # beta = 3
    model = AutoModelForCausalLM.from_pretrained(out)
    w0, w1, got = state(run / "checkpoint-10"), state(run / "checkpoint-20"), model.state_dict()
    dtype = w1[EMBED].dtype
    for name in (EMBED, BIAS, "lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        want = (w0[name].float() + 3.0 * (w1[name].float() - w0[name].float())).to(dtype)
        assert torch.allclose(
            got[name].to(dtype).float(), want.float(), atol=1e-6, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5
        ), name
        assert not torch.equal(got[name], w1[name].to(got[name].dtype)), name  # really moved past t1
    assert torch.equal(got[NORM].to(dtype), w1[NORM])  # norms copied from t1 exactly
    assert torch.equal(got["model.norm.weight"].to(dtype), w1["model.norm.weight"])
    assert state(out)[EMBED].dtype == dtype  # saved in the source dtype
    record = json.loads((out / "extrapolation.json").read_text())
    assert record["beta"] == 3.0 and (record["t0"], record["t1"], record["target_step"]) == (10, 20, 40)
    assert NORM in record["copied_from_t1"] and EMBED not in record["copied_from_t1"]
    assert (out / "config.json").exists()


def test_tied_embeddings_round_trip(tmp_path):
    a = checkpoint(tmp_path / "checkpoint-0", 0, tied=True)
    b = checkpoint(tmp_path / "checkpoint-4", 4, tied=True)
    out = ex.extrapolate(Trajectory([a, b]), 0, 4, 10, tmp_path / "out", "extrapolate")
    assert "lm_head.weight" not in state(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    emb = state(a)[EMBED] + 2.5 * (state(b)[EMBED] - state(a)[EMBED])
    assert torch.allclose(model.get_input_embeddings().weight, emb, atol=1e-6)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_cli_end_to_end(tmp_path):
    base = checkpoint(tmp_path / "sft", 0, trainer_state=False)  # no step in name or state: pass --from-step
    later = checkpoint(tmp_path / "run" / "checkpoint-20", 20)
    out = tmp_path / "e0-20-50"
    assert (
        ex.main(
            [
                "--from",
                str(base),
                "--to",
                str(later),
                "--target-step",
                "50",
                "--out",
                str(out),
                "--from-step",
                "0",
                "--norms",
                "extrapolate",
            ]
        )
        == out
    )
    record = json.loads((out / "extrapolation.json").read_text())
    assert (record["t0"], record["t1"], record["beta"], record["norms"]) == (0, 20, 2.5, "extrapolate")
    got, w0, w1 = state(out), state(base), state(later)
    assert torch.allclose(got[NORM], w0[NORM] + 2.5 * (w1[NORM] - w0[NORM]), atol=1e-6)
    AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(SystemExit):  # refuses to replace an existing directory without --overwrite
        ex.main(["--from", str(base), "--to", str(later), "--target-step", "60", "--out", str(out), "--from-step", "0"])
    assert json.loads((out / "extrapolation.json").read_text())["target_step"] == 50
    with pytest.raises(Exception, match="cannot tell the step"):
        ex.main(["--from", str(base), "--to", str(later), "--target-step", "50", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# --- issue 18 ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "run"
    for step in (10, 20):
        checkpoint(root / f"checkpoint-{step}", step)
    return root


def cli_error(capsys, *argv):
    """The one stderr line of `python -m helpers.lib.extrapolation argv` ending on a user error (exit 2)."""
    from helpers.lib import cli

    with pytest.raises(SystemExit) as e:
        cli.run(ex.main, [str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def args(run, out, *more, target=40):
    return [
        str(a)
        for a in (
            "--from",
            run / "checkpoint-10",
            "--to",
            run / "checkpoint-20",
            "--target-step",
            target,
            "--out",
            out,
            *more,
        )
    ]


def test_overwrite_never_replaces_an_input_or_the_run(small_run, tmp_path, capsys):
    """Item 1: --overwrite replaces only an earlier extrapolation — never the run directory, an input checkpoint, or a
    directory the tool did not write."""
    before = sorted(p.relative_to(small_run) for p in small_run.rglob("*"))
    ckpt = (small_run / "checkpoint-10").resolve()
    assert cli_error(capsys, *args(small_run, small_run, "--overwrite")) == (
        f"error: {small_run}: holds the input checkpoint {ckpt} (step 10); an extrapolation is never written over its "
        "inputs, choose another output directory"
    )
    assert cli_error(capsys, *args(small_run, small_run / "checkpoint-10", "--overwrite")) == (
        f"error: {small_run / 'checkpoint-10'}: is the input checkpoint (step 10); an extrapolation is never written "
        "over its inputs, choose another output directory"
    )
    assert sorted(p.relative_to(small_run) for p in small_run.rglob("*")) == before
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    assert cli_error(capsys, *args(small_run, theirs, "--overwrite")) == (
        f"error: {theirs}: exists and is not a checkpoint written by this tool (no extrapolation.json); not replaced, "
        "choose a new output directory"
    )
    assert (theirs / "notes.txt").read_text() == "keep"
    out = ex.main(args(small_run, tmp_path / "e", target=30))
    ex.main(args(small_run, out, "--overwrite", target=50))  # an earlier extrapolation: replaced
    assert json.loads((out / "extrapolation.json").read_text())["target_step"] == 50


def test_overflowing_beta_is_a_clear_error(small_run, tmp_path, capsys):
    """Item 6: β beyond float32 is a ValueError naming β (was a RuntimeError from torch.lerp)."""
    with pytest.raises(
        ValueError,
        match=r"β = 1e\+39 \(t0 = 10, t1 = 20, target step 1e\+40\) is beyond float32's "
        r"range \(\|β\| ≤ 3.4e\+38\)",
    ):
        ex.coefficient(10, 20, 1e40)
    assert cli_error(capsys, *args(small_run, tmp_path / "o", target="1e40")) == (
        "error: β = 1e+39 (t0 = 10, t1 = 20, target step 1e+40) is beyond float32's range (|β| ≤ 3.4e+38), in which "
        "the weights are extrapolated; choose a nearer target step"
    )
    assert not (tmp_path / "o").exists()


def test_missing_from_directory(small_run, tmp_path, capsys):
    """Item 6: a --from that does not exist says so (was "cannot tell the step")."""
    missing = tmp_path / "checkpoint-5"
    assert (
        cli_error(
            capsys, "--from", missing, "--to", small_run / "checkpoint-20", "--target-step", 40, "--out", tmp_path / "o"
        )
        == f"error: {missing}: no such checkpoint directory"
    )


def test_from_newer_than_to_warns(small_run, tmp_path, capsys):
    """Item 6: --from newer than --to warns that t0 > t1 (norms and config then come from the older checkpoint)."""
    from helpers.lib.trajectory import TrajectoryWarning

    with pytest.warns(
        TrajectoryWarning,
        match=r"--from .*checkpoint-20 \(step 20\) is newer than --to "
        r".*checkpoint-10 \(step 10\): t0 > t1",
    ):
        ex.pair(small_run / "checkpoint-20", small_run / "checkpoint-10")
    ex.main(
        [
            "--from",
            str(small_run / "checkpoint-20"),
            "--to",
            str(small_run / "checkpoint-10"),
            "--target-step",
            "40",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert capsys.readouterr().err == (
        f"warning: --from {small_run / 'checkpoint-20'} (step 20) is newer than --to {small_run / 'checkpoint-10'} "
        "(step 10): t0 > t1, so config, tokenizer and copied norms come from the older checkpoint; swap --from and "
        "--to unless that is meant\n"
    )


def test_command_line_ends_on_one_line_and_exit_2(tmp_path):
    """Item 6: `python -m helpers.lib.extrapolation` ends through cli.run: one line on stderr, exit status 2."""
    import subprocess
    import sys

    from helpers.lib.paths import REPO

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.lib.extrapolation",
            "--from",
            str(tmp_path / "nope"),
            "--to",
            str(tmp_path / "nope2"),
            "--target-step",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (p.returncode, p.stderr) == (2, f"error: {tmp_path / 'nope'}: no such checkpoint directory\n")
