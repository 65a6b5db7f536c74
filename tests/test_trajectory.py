import copy
import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from helpers.lib import config
from helpers.lib.runs import trajectory as from_config
from helpers.lib.trajectory import Trajectory, TrajectoryError, TrajectoryWarning, step_of

TINY = dict(
    hidden_size=64,
    num_attention_heads=2,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=128,
    vocab_size=32,
)
UP = "model.layers.0.mlp.up_proj.weight"
LAYOUTS = {
    "trl": "checkpoint-{}",
    "verl": "global_step_{}/actor/huggingface",
    "openrlhf": "global_step{}_hf",
    "plain": "step_{}",
}


def tiny_model(tied=False):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=tied, **TINY))


def at_step(model, step, dtype=torch.float32):
    """A copy of `model` moved along a fixed random direction by 1e-3 per step (a linear trajectory)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1e-3 * step * torch.randn(p.shape, generator=g))
    return m.to(dtype)


def save(model, path, step, dtype=torch.float32, **kw):
    at_step(model, step, dtype).save_pretrained(path, **kw)
    return path


def make_run(root, model, steps, layout="trl", **kw):
    for s in steps:
        save(model, root / LAYOUTS[layout].format(s), s, **kw)
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def run(tmp_path_factory, model):
    return make_run(tmp_path_factory.mktemp("run"), model, [0, 10, 20, 30])


def expected_series(model, name, steps):
    return torch.stack([at_step(model, s).state_dict()[name].reshape(-1).double() for s in steps])


# --- layouts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts(tmp_path, model, layout):
    make_run(tmp_path, model, [0, 5, 10], layout)
    if layout == "verl":  # verl also keeps FSDP shards and a marker file beside the HF dir
        (tmp_path / "global_step_5" / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"x")
        (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    traj = Trajectory(tmp_path)
    assert traj.steps == [0, 5, 10]
    assert traj.path(5) == (tmp_path / LAYOUTS[layout].format(5)).resolve()
    assert torch.allclose(traj.series(UP), expected_series(model, UP, [0, 5, 10]), atol=0, rtol=0)


def test_list_dict_and_separate_base(tmp_path, model):
    run = make_run(tmp_path / "run", model, [4, 8])
    base = save(model, tmp_path / "sft", 0)
    verl = save(model, tmp_path / "v" / "global_step_12" / "actor" / "huggingface", 12)
    traj = Trajectory(
        [run / "checkpoint-8", run / "checkpoint-4", verl, (16, save(model, tmp_path / "x", 16))], base=base
    )
    assert traj.steps == [0, 4, 8, 12, 16] and traj.path(0) == base.resolve()
    assert torch.equal(traj.series(UP), expected_series(model, UP, traj.steps))
    by_dir = Trajectory(run, base=base)
    assert by_dir.steps == [0, 4, 8]
    pair = Trajectory({4: run / "checkpoint-4", 12: tmp_path / "v" / "global_step_12"})
    assert pair.steps == [4, 12] and pair.path(12) == verl.resolve()
    assert step_of(run / "checkpoint-8") == 8 and step_of(verl) == 12
    with pytest.warns(TrajectoryWarning, match="no base"):
        Trajectory(run)


def test_sharded_index(tmp_path, model):
    make_run(tmp_path, model, [0, 1, 2], max_shard_size="40KB")
    shards = list((tmp_path / "checkpoint-1").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "checkpoint-1" / "model.safetensors.index.json").exists()
    traj = Trajectory(tmp_path)
    assert len({traj.checkpoint(1).tensors[n].file for n in traj.names}) == len(shards)
    for name in (UP, "lm_head.weight", "model.norm.weight"):
        assert torch.equal(traj.series(name), expected_series(model, name, [0, 1, 2]))


def test_tied_and_untied(tmp_path, model):
    untied = Trajectory(make_run(tmp_path / "u", model, [0, 1]))
    assert not untied.tied_embeddings and "lm_head.weight" in untied.names
    tied_model = tiny_model(tied=True)
    tied = Trajectory(make_run(tmp_path / "t", tied_model, [0, 1]))
    assert tied.tied_embeddings and "lm_head.weight" not in tied.names
    assert len(tied.names) == len(untied.names) - 1
    assert torch.equal(tied.tensor("lm_head.weight", 1), tied.tensor("model.embed_tokens.weight", 1))
    assert tied.shape("lm_head.weight") == (32, 64)


def test_mixed_dtypes(tmp_path, model):
    save(model, tmp_path / "checkpoint-0", 0)
    save(model, tmp_path / "checkpoint-1", 1, dtype=torch.bfloat16)
    save(model, tmp_path / "checkpoint-2", 2)
    traj = Trajectory(tmp_path)
    assert traj.dtype(UP) == torch.float32 and traj.checkpoint(1).tensors[UP].dtype == torch.bfloat16
    assert traj.tensor(UP, 1).dtype == torch.bfloat16 and traj.tensor(UP, 1, torch.float32).dtype == torch.float32
    y = traj.series(UP, dtype=torch.float32)
    assert y.dtype == torch.float32
    assert torch.equal(y[1], at_step(model, 1).state_dict()[UP].bfloat16().float().reshape(-1))
    idx = torch.tensor([3, 0, 4095, 77, 77])
    assert torch.equal(traj.series(UP, idx, dtype=torch.float32), y[:, idx])


# --- reading -------------------------------------------------------------------------------------------------------


def test_series_sample_matches_full_and_reads_no_whole_tensor(run, model, monkeypatch):
    traj = Trajectory(run)
    g = torch.Generator().manual_seed(0)
    for name in (UP, "model.norm.weight", "model.embed_tokens.weight"):
        idx = torch.randint(traj.numel(name), (50,), generator=g)
        full = traj.series(name)
        assert full.shape == (4, traj.numel(name)) and full.dtype == torch.float64
        assert torch.equal(full, expected_series(model, name, traj.steps))
        monkeypatch.setattr(Trajectory, "tensor", lambda *a, **k: pytest.fail("sampled read loaded a whole tensor"))
        assert torch.equal(traj.series(name, idx), full[:, idx])
        monkeypatch.undo()
    with pytest.raises(TrajectoryError, match="out of range"):
        traj.series(UP, torch.tensor([traj.numel(UP)]))


def test_rows_and_flat(run):
    traj = Trajectory(run)
    w = traj.tensor(UP, 20)
    assert torch.equal(traj.rows(UP, 20, 3, 7), w[3:7])
    assert torch.equal(traj.flat(UP, 20, 100, 300), w.reshape(-1)[100:300])
    with pytest.raises(TrajectoryError, match="out of range"):
        traj.rows(UP, 20, 0, 10_000)


def test_load_model_and_tokenizer(run, tmp_path):
    from tokenizers import Tokenizer, models

    traj = Trajectory(run)
    m = traj.load_model(20)
    assert not m.training
    sd = m.state_dict()
    for name in traj.names:
        assert torch.equal(sd[name], traj.tensor(name, 20)), name
    with pytest.raises(TrajectoryError, match="no tokenizer"):
        traj.load_tokenizer()
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(32)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0"
    ).save_pretrained(traj.path(0))
    try:
        assert traj.load_tokenizer(step=30).convert_tokens_to_ids("t7") == 7  # falls back to the base
    finally:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (traj.path(0) / f).unlink()


# --- bad input -----------------------------------------------------------------------------------------------------


def test_empty_and_missing(tmp_path):
    (tmp_path / "logs").mkdir()
    with pytest.raises(TrajectoryError, match=f"{tmp_path}: no checkpoints found"):
        Trajectory(tmp_path)
    with pytest.raises(TrajectoryError, match="not a directory"):
        Trajectory(tmp_path / "nope")
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(TrajectoryError, match="checkpoint-3: no model.safetensors"):
        Trajectory(tmp_path)
    with pytest.raises(TrajectoryError, match="cannot tell the step"):
        Trajectory([tmp_path / "logs"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not-a-dict"])
def test_corrupt_file(tmp_path, model, damage):
    make_run(tmp_path, model, [0, 1])
    f = tmp_path / "checkpoint-1" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(
        {"truncate": data[:-100], "garbage": b"\xff" * 64, "empty": b"", "not-a-dict": struct.pack("<Q", 2) + b"[]"}[
            damage
        ]
    )
    with pytest.raises(TrajectoryError, match=f"{f}: corrupt safetensors"):
        Trajectory(tmp_path)


def test_truncated_after_open(tmp_path, model):
    """A file cut short after its header was checked gives a clear error from every read, never a crash."""
    make_run(tmp_path, model, [0, 1, 2])
    traj = Trajectory(tmp_path)
    f = tmp_path / "checkpoint-2" / "model.safetensors"
    last = max(traj.names, key=lambda n: traj.checkpoint(2).tensors[n].offset)
    f.write_bytes(f.read_bytes()[:-100])
    for read in (
        lambda: traj.series(last, torch.tensor([0, traj.numel(last) - 1])),
        lambda: traj.flat(last, 2, 0, traj.numel(last)),
        lambda: traj.tensor(last, 2),
    ):
        with pytest.raises(TrajectoryError, match=rf"{f}: .*(truncated|{last})"):
            read()


def test_sampled_bf16_series_equals_full(tmp_path, model):
    for step in (0, 1, 2):
        save(model, tmp_path / f"checkpoint-{step}", step, dtype=torch.bfloat16)
    traj = Trajectory(tmp_path)
    idx = torch.tensor([4095, 0, 17, 17, 2048])
    assert torch.equal(traj.series(UP, idx), traj.series(UP)[:, idx])


def rewrite(path, edit):
    """Re-save a checkpoint's model.safetensors after `edit(state_dict)`."""
    from safetensors.torch import load_file, save_file

    f = path / "model.safetensors"
    sd = load_file(f)
    edit(sd)
    save_file(sd, f, metadata={"format": "pt"})
    return f


def test_missing_and_reshaped_tensor(tmp_path, model):
    make_run(tmp_path, model, [0, 1, 2])
    rewrite(tmp_path / "checkpoint-2", lambda sd: sd.pop(UP))
    with pytest.raises(TrajectoryError, match=rf"checkpoint-2 \(step 2\): missing tensor.*{UP}"):
        Trajectory(tmp_path)
    rewrite(tmp_path / "checkpoint-2", lambda sd: sd.update({UP: torch.zeros(128, 32)}))
    with pytest.raises(TrajectoryError, match=rf"checkpoint-2/model.safetensors \(step 2\).*{UP}.*\(128, 32\)"):
        Trajectory(tmp_path)


def test_duplicate_steps(tmp_path, model):
    make_run(tmp_path, model, [0, 1])
    save(model, tmp_path / "step_1", 1)
    with pytest.raises(TrajectoryError, match="duplicate step 1: .*checkpoint-1 and .*step_1"):
        Trajectory(tmp_path)


def test_non_finite(tmp_path, model):
    make_run(tmp_path, model, [0, 1, 2])
    f = rewrite(tmp_path / "checkpoint-1", lambda sd: sd[UP].view(-1).__setitem__(5, float("nan")))
    traj = Trajectory(tmp_path)  # headers are fine; the values are checked when read
    with pytest.raises(TrajectoryError, match=rf"{f} \(step 1\).*{UP}.*1 non-finite"):
        traj.series(UP)
    with pytest.raises(TrajectoryError, match="non-finite"):
        traj.series(UP, torch.tensor([5]))
    assert traj.series(UP, torch.tensor([4, 6])).isfinite().all()  # samples that miss it are fine
    rewrite(tmp_path / "checkpoint-2", lambda sd: sd["model.norm.weight"].__setitem__(0, float("inf")))
    with pytest.raises(TrajectoryError, match="checkpoint-2.*non-finite"):
        traj.tensor("model.norm.weight", 2)


def test_pickle_refused_unless_allowed(tmp_path, model):
    make_run(tmp_path, model, [0, 1])
    d = tmp_path / "checkpoint-1"
    sd = {k: v.contiguous() for k, v in at_step(model, 1).state_dict().items()}
    torch.save(sd, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(TrajectoryError, match="checkpoint-1: only pickle weights"):
        Trajectory(tmp_path)
    traj = Trajectory(tmp_path, allow_pickle=True)
    assert torch.equal(traj.series(UP), expected_series(model, UP, [0, 1]))
    assert torch.equal(traj.series(UP, torch.tensor([9, 2])), traj.series(UP)[:, [9, 2]])


def test_trainer_state_must_agree(tmp_path, model):
    make_run(tmp_path, model, [0, 1])
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    Trajectory(tmp_path)
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    with pytest.raises(TrajectoryError, match="checkpoint-1/trainer_state.json: global_step 7 disagrees"):
        Trajectory(tmp_path)
    assert Trajectory({0: tmp_path / "checkpoint-0", 1: tmp_path / "checkpoint-1"}).steps == [0, 1]  # steps given


def test_verl_without_hf_weights(tmp_path, model):
    make_run(tmp_path, model, [0], "verl")
    actor = tmp_path / "global_step_5" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    shutil.copy(tmp_path / "global_step_0/actor/huggingface/config.json", actor / "huggingface")
    (actor / "model_world_size_2_rank_0.pt").write_bytes(b"x")
    with pytest.raises(
        TrajectoryError,
        match=f"{actor}: verl .*python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir",
    ):
        Trajectory(tmp_path)
    shutil.rmtree(actor / "huggingface")  # older verl: no huggingface/ at all
    with pytest.raises(TrajectoryError, match=f"{actor}: verl .*model_merger"):
        Trajectory(tmp_path)


def test_uneven_spacing_warns(tmp_path, model):
    make_run(tmp_path, model, [0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trajectory(tmp_path)
    save(model, tmp_path / "checkpoint-5", 5)
    with pytest.warns(TrajectoryWarning, match=r"uneven step spacing, steps \[0, 1, 2, 5\]"):
        Trajectory(tmp_path)


def test_from_config(run, tmp_path, model):
    cfg = config.load(profile="default", overrides={"trajectory.dir": str(run)})
    assert from_config(cfg).steps == [0, 10, 20, 30]
    partial = make_run(tmp_path / "r", model, [10, 20])
    cfg = config.load(
        profile="default", overrides={"trajectory.dir": str(partial), "trajectory.base": str(run / "checkpoint-0")}
    )
    assert from_config(cfg).path(0) == (run / "checkpoint-0").resolve()
    own_start = make_run(tmp_path / "s", model, [0, 10])  # base given too: the run's own step 0 wins, no clash
    cfg = config.load(
        profile="default", overrides={"trajectory.dir": str(own_start), "trajectory.base": str(run / "checkpoint-0")}
    )
    assert from_config(cfg).path(0) == (own_start / "checkpoint-0").resolve()


def test_weights_only_checkpoint_uses_base_config(tmp_path, model):
    make_run(tmp_path, model, [0, 3])
    (tmp_path / "checkpoint-3" / "config.json").unlink()
    traj = Trajectory(tmp_path)
    assert torch.equal(traj.load_model(3).state_dict()[UP], traj.tensor(UP, 3))


# --- issue 18 ---------------------------------------------------------------------------------------------------------


def small_run(root, model, steps=(0, 10, 20)):
    """A run whose checkpoints share one saved model (the values do not matter here)."""
    save(model, root / f"checkpoint-{steps[0]}", 0)
    for s in steps[1:]:
        shutil.copytree(root / f"checkpoint-{steps[0]}", root / f"checkpoint-{s}")
    return root


def test_extrapolation_in_a_run_is_skipped_with_a_warning_or_an_error(tmp_path, model):
    """Item 1: a checkpoint directory holding an extrapolation (its extrapolation.json) is no step of the run."""
    run = small_run(tmp_path, model, (0, 10, 20, 30))
    (run / "checkpoint-30" / "extrapolation.json").write_text('{"beta": 3}')
    with pytest.warns(
        TrajectoryWarning,
        match=r"checkpoint-30: its extrapolation.json says it is an extrapolated "
        r"model, not step 30 of the run; move it out of the run directory "
        r"\(skipped\)",
    ):
        assert Trajectory(run).steps == [0, 10, 20]
    with pytest.raises(TrajectoryError, match="checkpoint-30: its extrapolation.json says it is an extrapolated"):
        Trajectory(run, skip_extrapolations=False)
    assert Trajectory({0: run / "checkpoint-0", 30: run / "checkpoint-30"}).steps == [0, 30]  # given steps: as asked


@pytest.mark.parametrize(
    "target, message",
    [
        (
            "/nonexistent",
            r"broken symlink \(its target /nonexistent does not "
            r"exist\)",
        ),
        ("checkpoint-30", "symlink loop"),
    ],
    ids=["dangling", "loop"],
)
def test_broken_checkpoint_symlink_is_an_error(tmp_path, model, target, message):
    """Item 4: a broken checkpoint symlink is an error naming it (it was dropped: the run ended one step early)."""
    run = small_run(tmp_path, model)
    (run / "checkpoint-30").symlink_to(target)
    (run / "latest").symlink_to("/nonexistent")  # not named like a checkpoint: none of the run's business
    with pytest.raises(TrajectoryError, match=f"{run / 'checkpoint-30'}: {message}"):
        Trajectory(run)


def deny(monkeypatch, stat=lambda p: False, read=lambda p: False):
    """Make os.stat of paths where `stat(path)` holds, and Path.read_text of paths where `read(path)` holds, raise
    PermissionError, as missing permissions do (the tests may run as root, whom chmod does not stop)."""
    real_stat, real_read = os.stat, Path.read_text

    def fake_stat(path, *a, **kw):
        if stat(Path(path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    def fake_read(self, *a, **kw):
        if read(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(Path, "read_text", fake_read)


def test_unreadable_run_entry_is_an_error(tmp_path, model, monkeypatch):
    """Item 4: an entry of the run directory that cannot be read is an error naming it (it was dropped or raised a
    bare PermissionError)."""
    run = small_run(tmp_path, model)
    deny(monkeypatch, stat=lambda p: p.name == "checkpoint-20")
    with pytest.raises(TrajectoryError, match=f"{run / 'checkpoint-20'}: cannot read \\(Permission denied\\)"):
        Trajectory(run)


def test_unreadable_checkpoint_directory_names_it(tmp_path, model, monkeypatch):
    """Item 6: a checkpoint directory whose files cannot be read: an error naming it, not a bare PermissionError."""
    run = small_run(tmp_path, model)
    ckpt = (run / "checkpoint-10").resolve()
    deny(monkeypatch, stat=lambda p: p.parent == ckpt)  # a directory without read / search permission
    with pytest.raises(TrajectoryError, match=rf"{ckpt}: cannot read \(Permission denied\)"):
        Trajectory(run)
    with pytest.raises(
        TrajectoryError,
        match=rf"{ckpt} \(step 10\): cannot read \(\[Errno 13\] Permission denied: "
        rf"'{ckpt}/model.safetensors.index.json'\)",
    ):
        Trajectory({0: run / "checkpoint-0", 10: ckpt})


@pytest.mark.parametrize("problem", ["unreadable", "corrupt"])
def test_bad_config_json_names_the_file(tmp_path, model, monkeypatch, problem):
    """Item 6: an unreadable or corrupt config.json is an error naming the file (was a bare PermissionError /
    JSONDecodeError)."""
    run = small_run(tmp_path, model)
    config = (run / "checkpoint-0" / "config.json").resolve()
    if problem == "unreadable":
        deny(monkeypatch, read=lambda p: p == config)
        message = rf"{config}: cannot read \(Permission denied\)"
    else:
        config.write_text('{"tie_word_embeddings": fals')
        message = rf"{config}: not valid JSON \(Expecting value: line 1"
    with pytest.raises(TrajectoryError, match=message):
        Trajectory(run)
