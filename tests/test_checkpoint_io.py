import json
import os
import stat
import struct
import weakref

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers.lib.checkpoint_io import write_checkpoint
from helpers.lib.trajectory import Trajectory

TINY = dict(
    hidden_size=64,
    num_attention_heads=2,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=128,
    vocab_size=32,
)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def like(request, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("like")
    Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=request.param, **TINY)).save_pretrained(d)
    (d / "tokenizer.json").write_text("{}")  # copied verbatim, never parsed here
    return d


def state(like):
    with safe_open(like / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip(tmp_path, like, dtype):
    sd = {k: v + 0.5 for k, v in state(like).items()}
    out = write_checkpoint(tmp_path / "out", iter(sd.items()), like, record={"beta": 1.5}, dtype_of=lambda n: dtype)
    assert out == tmp_path / "out"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"} and set(f.keys()) == set(sd)
        for k, v in sd.items():
            assert torch.equal(f.get_tensor(k), v.to(dtype)), k
    assert json.loads((out / "extrapolation.json").read_text()) == {"beta": 1.5}
    for f in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / f).read_bytes() == (like / f).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
    loaded = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v.to(dtype)), k
    if model.config.tie_word_embeddings:
        assert torch.equal(loaded["lm_head.weight"], sd["model.embed_tokens.weight"].to(dtype))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp files left behind


def test_tied_head_skipped_and_trajectory_reads_it(tmp_path, like):
    sd = state(like)
    tied = json.loads((like / "config.json").read_text())["tie_word_embeddings"]
    stream = list(sd.items()) + ([("lm_head.weight", sd["model.embed_tokens.weight"])] if tied else [])
    out = write_checkpoint(tmp_path / "step_1", stream, like)
    _, h = header(out / "model.safetensors")
    assert ("lm_head.weight" in h) is not tied
    traj = Trajectory({0: like, 1: out})
    assert traj.tied_embeddings is tied
    for name in traj.names:
        assert torch.equal(traj.tensor(name, 1), sd[name])


def test_mixed_dtypes_are_aligned(tmp_path, like):
    tensors = [
        ("a", torch.arange(3, dtype=torch.bfloat16)),
        ("b", torch.arange(5, dtype=torch.float32)),
        ("c", torch.tensor([True, False, True])),
        ("d", torch.arange(3, dtype=torch.int64)),
        ("e", torch.tensor(2.5)),
    ]
    out = write_checkpoint(tmp_path / "o", tensors, like, dtype_of={"b": torch.float64})
    n, h = header(out / "model.safetensors")
    assert (8 + n) % 8 == 0
    width = {"F64": 8, "I64": 8, "F32": 4, "BF16": 2, "BOOL": 1}
    for name, e in h.items():
        if name != "__metadata__":
            assert e["data_offsets"][0] % width[e["dtype"]] == 0, name
    with safe_open(out / "model.safetensors", "pt") as f:
        for name, t in tensors:
            want = t.double() if name == "b" else t
            assert torch.equal(f.get_tensor(name), want) and f.get_tensor(name).dtype == want.dtype


def test_streams_one_tensor_at_a_time(tmp_path, like):
    alive = []

    def gen():
        for i in range(5):
            data = np.full(1000, float(i), dtype=np.float32)  # lives as long as any tensor sharing its memory
            alive.append(weakref.ref(data))
            yield f"t{i}", torch.from_numpy(data)
            del data
            assert sum(r() is not None for r in alive) == 0, "the writer kept a reference to a written tensor"

    out = write_checkpoint(tmp_path / "o", gen(), like)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert [f.get_tensor(f"t{i}")[0].item() for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_atomic_on_failure(tmp_path, like):
    def failing():
        yield "ok", torch.ones(3)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_checkpoint(tmp_path / "o", failing(), like)
    with pytest.raises(ValueError, match="o: tensor 'bad' has non-finite"):
        write_checkpoint(tmp_path / "o", [("bad", torch.tensor([1.0, float("nan")]))], like)
    with pytest.raises(ValueError, match="duplicate tensor names"):
        write_checkpoint(tmp_path / "o", [("x", torch.ones(1)), ("x", torch.ones(1))], like)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_checkpoint(tmp_path / "o", [("x", torch.ones(1))], tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- issue 18 ---------------------------------------------------------------------------------------------------------


def test_never_replaces_a_directory_it_did_not_write(tmp_path, like):
    """Item 1: an existing directory is replaced only when asked to and only if it is an earlier output."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(
            FileExistsError,
            match=r"theirs: exists and is not a checkpoint written by this tool "
            r"\(no extrapolation.json\); not replaced",
        ):
            write_checkpoint(theirs, [("x", torch.ones(1))], like, record={"beta": 2}, overwrite=overwrite)
    assert (theirs / "precious.txt").read_text() == "keep"
    mine = write_checkpoint(tmp_path / "mine", [("x", torch.ones(1))], like, record={"beta": 2})
    with pytest.raises(FileExistsError, match="mine: exists .*pass overwrite=True"):
        write_checkpoint(mine, [("x", torch.zeros(1))], like, record={"beta": 3})
    write_checkpoint(mine, [("x", torch.zeros(1))], like, record={"beta": 3}, overwrite=True)
    assert json.loads((mine / "extrapolation.json").read_text()) == {"beta": 3}


def test_corrupt_config_of_like_names_the_file(tmp_path, like):
    """Item 6: a corrupt config.json is an error naming it, not a bare JSONDecodeError."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/config.json: not valid JSON \(Expecting property name"):
        write_checkpoint(tmp_path / "o", [("x", torch.ones(1))], bad)


def test_output_gets_umask_permissions(tmp_path, like):
    """Item 9: the checkpoint directory and its files are readable as the umask allows (not 0700 / 0600)."""
    old = os.umask(0o022)
    try:
        out = write_checkpoint(tmp_path / "o", [("x", torch.ones(1))], like, record={"beta": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {
        f: 0o644
        for f in ("model.safetensors", "extrapolation.json", "config.json", "generation_config.json", "tokenizer.json")
    }
