"""Write a model checkpoint from a stream of tensors, holding one tensor in memory at a time.

    write_checkpoint(out_dir, ((name, W0 + beta * (W1 - W0)) for name in names), like=traj.path(step))

The safetensors header needs every shape and dtype before the data, so the data goes to a temp file first; the final
`model.safetensors` is then the header followed by the data copied back in chunks (tensors ordered as safetensors
orders them — largest item size first, then by name — so every tensor is aligned). Peak memory: one tensor.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from helpers.lib.paths import atomic_dir, atomic_write_json
from helpers.lib.trajectory import RECORD_NAME, all_finite, read_json

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
CHUNK = 16 << 20  # bytes copied at a time when assembling the final file


def check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """An existing `out_dir` may be replaced only when `overwrite` is asked for and only if it is an earlier output
    (a directory holding `RECORD_NAME`); anything else is a FileExistsError naming it."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if out_dir.is_symlink() or not (out_dir / RECORD_NAME).is_file():
        raise FileExistsError(
            f"{out_dir}: exists and is not a checkpoint written by this tool (no {RECORD_NAME}); "
            "not replaced, choose a new output directory"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out_dir}: exists (an earlier extrapolation); pass overwrite=True (--overwrite) to replace it"
        )


def write_checkpoint(
    out_dir,
    tensors: Iterable[tuple[str, torch.Tensor]],
    like,
    record: dict | None = None,
    dtype_of: Callable[[str], torch.dtype] | Mapping[str, torch.dtype] | None = None,
    overwrite: bool = False,
) -> Path:
    """Stream (name, tensor) pairs into out_dir/model.safetensors; copy config + tokenizer files from `like`.

    dtype_of: the dtype to store each tensor in (a function or a mapping of name -> dtype); default: as given.
    With tied embeddings in `like`'s config, `lm_head.weight` is skipped (it is the embedding).
    `record` (JSON-able) is written as out_dir/extrapolation.json. Atomic: out_dir appears only when complete.
    An existing out_dir is replaced only with `overwrite` and only if it holds such a record (`check_replaceable`).
    """
    like, out_dir = Path(like), Path(out_dir)
    check_replaceable(out_dir, overwrite)
    if not (like / "config.json").exists():
        raise FileNotFoundError(f"{like}: no config.json to copy")
    tied = read_json(like / "config.json").get("tie_word_embeddings", False)
    cast = dtype_of.get if isinstance(dtype_of, Mapping) else dtype_of
    with atomic_dir(out_dir) as tmp:
        entries = []  # (name, dtype, shape, start, stop) in the temp data file
        with open(tmp / "data.tmp", "wb") as data:
            for name, t in tensors:
                if tied and name == "lm_head.weight":
                    continue
                t = t.detach().to("cpu", (cast(name) if cast else None) or t.dtype).contiguous()
                if t.dtype not in DTYPE_NAMES:
                    raise TypeError(f"{out_dir}: tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
                if not all_finite(t):
                    raise ValueError(f"{out_dir}: tensor {name!r} has non-finite values (NaN/inf); not written")
                start = data.tell()
                data.write(t.reshape(-1).view(torch.uint8).numpy().data)
                entries.append((name, t.dtype, tuple(t.shape), start, data.tell()))
                del t
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{out_dir}: duplicate tensor names in the stream")
        entries.sort(key=lambda e: (-e[1].itemsize, e[0]))
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, start, stop in entries:
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + stop - start],
            }
            offset += stop - start
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
        with open(tmp / "model.safetensors", "wb") as out, open(tmp / "data.tmp", "rb") as data:
            out.write(struct.pack("<Q", len(blob)) + blob)
            for _, _, _, start, stop in entries:
                data.seek(start)
                left = stop - start
                while left:
                    chunk = data.read(min(CHUNK, left))
                    out.write(chunk)
                    left -= len(chunk)
        (tmp / "data.tmp").unlink()
        for f in COPIED_FILES:
            if (like / f).exists():
                shutil.copy2(like / f, tmp / f)
        if record is not None:
            atomic_write_json(tmp / RECORD_NAME, record)
    return out_dir
