"""The GGUF writer: one file (`write_gguf`) or gguf-split shards (`write_split_gguf`) of any
architecture, metadata and tensor list.

It is gguf-py's `GGUFWriter` (gguf_writer.py) with metadata types inferred from Python values and
arrays packed in bulk. Three fills:
- "sparse": header and tensor infos, then the file is extended to its full size without writing
  data (holes): a 21 GB planning fixture is made in well under a second (the header is the work).
- "zeros": real zero bytes.
- "random": weights the engine can run, deterministic from `seed` (synth/fill.py).

Every file is written to a temporary name in its directory, fsynced and renamed.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFEndian, GGUFValueType, GGUFWriter, Keys

from moecli.errors import BadInput, DiskSpaceError
from moecli.synth.fill import CHUNK_BYTES, RandomSource
from moecli.synth.tensor import TensorSpec

FILLS = ("random", "zeros", "sparse")


# ---------------------------------------------------------------------------------------------
# metadata


_INT_RANGES = [  # narrowest first
    (GGUFValueType.UINT32, 0, 2**32 - 1),
    (GGUFValueType.INT32, -(2**31), 2**31 - 1),
    (GGUFValueType.UINT64, 0, 2**64 - 1),
    (GGUFValueType.INT64, -(2**63), 2**63 - 1),
]


def _int_type(values: Sequence[int]) -> GGUFValueType:
    lo, hi = min(values), max(values)
    for vtype, vmin, vmax in _INT_RANGES:
        if vmin <= lo and hi <= vmax:
            return vtype
    raise BadInput(f"integer {lo if lo < 0 else hi} does not fit 64 bits", "GGUF integers are at most 64-bit")


def _scalar_type(key: str, values: Sequence[Any]) -> GGUFValueType:
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return GGUFValueType.BOOL
    if all(isinstance(v, str) for v in values):
        return GGUFValueType.STRING
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return _int_type([int(v) for v in values])
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
           for v in values):
        return GGUFValueType.FLOAT32
    raise BadInput(f"metadata {key}: cannot infer a GGUF type for {type(values[0]).__name__} values",
                   "pass (value, gguf.GGUFValueType.X)")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain_list(items: list[Any]) -> tuple[list[Any], set[type]]:
    """Items as plain Python values, and their types (one pass over big token lists)."""
    types = set(map(type, items))
    if types <= {str, int, float, bool}:
        return items, types
    items = [_plain(v) for v in items]
    return items, set(map(type, items))


def _add_kv(writer: GGUFWriter, key: str, value: Any) -> None:
    """Add one key with an inferred type; `(value, GGUFValueType.X)` forces the type (for a list,
    X is the element type, or ARRAY to infer it)."""
    explicit: GGUFValueType | None = None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], GGUFValueType):
        value, explicit = value
    value = _plain(value)
    if isinstance(value, (list, tuple)):
        items, types = _plain_list(list(value))
        if not items:
            raise BadInput(f"metadata {key} is an empty list", "GGUFWriter cannot write empty arrays: leave the key out")
        if explicit not in (None, GGUFValueType.ARRAY):
            sub = explicit
        elif types == {str}:
            sub = GGUFValueType.STRING
        else:
            sub = _scalar_type(key, items)
        if sub == GGUFValueType.FLOAT32:
            items = [float(v) for v in items]
        writer.add_key_value(key, items, GGUFValueType.ARRAY, sub_type=sub)
        return
    vtype = explicit or _scalar_type(key, [value])
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        value = float(value)
    writer.add_key_value(key, value, vtype)


_NUMPY_OF = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "?",
}


def _pack_strings(values: Sequence[str]) -> bytes:
    """GGUF strings (u64 length + UTF-8 bytes each), vectorised: join with NUL, then scatter."""
    try:
        joined_text = "\0".join(values)
    except TypeError:  # bytes among them: the plain way
        joined_text = None
    if joined_text is None or joined_text.count("\0") != len(values) - 1:  # or NULs inside strings
        length = struct.Struct("<Q").pack
        encoded = (v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)
        return b"".join(length(len(e)) + e for e in encoded)
    joined = np.frombuffer(joined_text.encode("utf-8"), dtype=np.uint8)
    is_sep = joined == 0
    string_of = np.cumsum(is_sep)  # index of the string each byte belongs to (separators: the next)
    ends = np.flatnonzero(is_sep)
    starts = np.concatenate(([0], ends + 1))
    lengths = np.diff(np.concatenate((starts, [len(joined) + 1]))) - 1
    out = np.empty(8 * len(values) + len(joined) - len(ends), dtype=np.uint8)
    keep = ~is_sep
    # byte j of string i lands after i+1 length fields and without the i separators before it
    out[(np.arange(len(joined)) + 7 * string_of + 8)[keep]] = joined[keep]
    heads = (starts + 7 * np.arange(len(values)))[:, None] + np.arange(8)
    out[heads] = lengths.astype("<u8").view(np.uint8).reshape(-1, 8)
    return out.tobytes()


class _Writer(GGUFWriter):
    """GGUFWriter with arrays packed in bulk: its per-item packing takes ~3 s for the 400,000
    strings of a Qwen tokenizer, which planning fixtures cannot afford. Same bytes."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None) -> bytes:
        if vtype != GGUFValueType.ARRAY or sub_type is None or self.endianess != GGUFEndian.LITTLE:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = struct.pack("<IIQ", vtype, sub_type, len(val)) if add_vtype else struct.pack("<IQ", sub_type, len(val))
        if sub_type == GGUFValueType.STRING:
            return head + _pack_strings(val)
        if sub_type in _NUMPY_OF:
            return head + np.asarray(val, dtype=_NUMPY_OF[sub_type]).tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


# ---------------------------------------------------------------------------------------------
# writing


def _check_inputs(arch: str, metadata: Mapping[str, Any], tensors: Sequence[TensorSpec], fill: str, alignment: int,
                  data: Mapping[str, np.ndarray] | None = None) -> None:
    if fill not in FILLS:
        raise BadInput(f"unknown fill {fill!r}", f"use one of: {', '.join(FILLS)}")
    if alignment <= 0 or alignment % 8:
        raise BadInput(f"alignment {alignment} is not a positive multiple of 8", "GGUF's default is 32")
    if not arch:
        raise BadInput("no architecture given", "pass arch, e.g. 'qwen35moe'")
    declared = metadata.get(Keys.General.ARCHITECTURE)
    if declared is not None and _plain(declared) != arch:
        raise BadInput(f"metadata says general.architecture={declared!r} but arch={arch!r}",
                       "leave general.architecture out of metadata: it is written from arch")
    names = set()
    for spec in tensors:
        spec.check()
        if spec.name in names:
            raise BadInput(f"tensor {spec.name} is listed twice", "tensor names must be unique")
        names.add(spec.name)
    unknown = sorted(set(data or {}) - names)
    if unknown:
        raise BadInput(f"data given for tensor(s) not in the model: {', '.join(unknown[:3])}",
                       "name tensors exactly as in the tensor list")


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def data_size(tensors: Sequence[TensorSpec], alignment: int = 32) -> int:
    """Bytes of the tensor data section (each tensor padded to the alignment, as GGUFWriter does)."""
    return sum(_pad(t.nbytes, alignment) for t in tensors)


def _header_writer(path: Path, arch: str, metadata: Mapping[str, Any], tensors: Sequence[TensorSpec],
                   alignment: int, with_arch: bool) -> GGUFWriter:
    writer = _Writer(path, arch)
    if not with_arch:  # gguf-split writes only the split keys into shards after the first
        writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)
    writer.data_alignment = alignment
    if alignment != 32:
        writer.add_uint32(Keys.General.ALIGNMENT, alignment)
    for key, value in metadata.items():
        if key != Keys.General.ARCHITECTURE:
            _add_kv(writer, key, value)
    for spec in tensors:
        # GGUFWriter takes numpy order (outermost first); with raw_dtype set and a non-uint8
        # dtype the shape is used as given
        writer.add_tensor_info(spec.name, tuple(reversed(spec.shape)), np.dtype(np.float32), spec.nbytes,
                               raw_dtype=spec.qtype)
    return writer


def _write_one(path: Path, arch: str, metadata: Mapping[str, Any], tensors: Sequence[TensorSpec], *,
               fill: str, source: RandomSource | None, alignment: int, with_arch: bool,
               on_bytes: Callable[[int], None]) -> Path:
    """Write one GGUF file at a temporary name beside `path`; return the temporary path (fsynced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = _header_writer(tmp, arch, metadata, tensors, alignment, with_arch)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        f = writer.fout[0]
        f.write(b"\0" * (_pad(f.tell(), alignment) - f.tell()))
        if fill == "sparse":
            f.truncate(f.tell() + data_size(tensors, alignment))
            on_bytes(sum(t.nbytes for t in tensors))
        else:
            zeros = memoryview(bytes(CHUNK_BYTES))
            for spec in tensors:
                if fill == "zeros":
                    left = spec.nbytes
                    while left:
                        n = min(left, CHUNK_BYTES)
                        f.write(zeros[:n])
                        left -= n
                        on_bytes(n)
                else:
                    assert source is not None
                    for chunk in source.chunks(spec):
                        f.write(chunk)
                        on_bytes(memoryview(chunk).nbytes)
                f.write(b"\0" * (_pad(spec.nbytes, alignment) - spec.nbytes))
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    return tmp


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        from moecli.units import fmt_bytes

        raise DiskSpaceError(f"{fmt_bytes(needed)} to write but {fmt_bytes(free)} free in {directory}",
                             "free some disk, pick another directory, or use fill='sparse'")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_files(paths: list[Path], arch: str, metadata: Mapping[str, Any], groups: list[list[TensorSpec]],
                 split_keys: bool, *, fill: str, seed: int, alignment: int,
                 progress: Callable[[int, int], None] | None, data: Mapping[str, np.ndarray] | None) -> list[Path]:
    directory = paths[0].parent
    directory.mkdir(parents=True, exist_ok=True)
    total = sum(t.nbytes for g in groups for t in g)
    if fill != "sparse":
        _check_space(directory, total)
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    source = RandomSource(seed, data) if fill == "random" else None
    n_tensors = sum(len(g) for g in groups)
    temps: list[Path] = []
    try:
        for i, (path, group) in enumerate(zip(paths, groups)):
            meta: dict[str, Any] = dict(metadata) if i == 0 else {}
            if split_keys:  # the keys gguf-split writes (tools/gguf-split/gguf-split.cpp)
                meta[Keys.Split.LLM_KV_SPLIT_NO] = (i, GGUFValueType.UINT16)
                meta[Keys.Split.LLM_KV_SPLIT_COUNT] = (len(paths), GGUFValueType.UINT16)
                meta[Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT] = (n_tensors, GGUFValueType.INT32)
            temps.append(_write_one(path, arch, meta, group, fill=fill, source=source, alignment=alignment,
                                    with_arch=(i == 0), on_bytes=on_bytes))
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in zip(temps, paths):
        os.replace(tmp, path)
    _fsync_dir(directory)
    return paths


def write_gguf(path: str | os.PathLike[str], arch: str, metadata: Mapping[str, Any], tensors: Sequence[TensorSpec], *,
               fill: str = "random", seed: int = 0, alignment: int = 32,
               progress: Callable[[int, int], None] | None = None,
               data: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write one GGUF file: `general.architecture` = arch, then `metadata` (full keys to Python
    values; types inferred, or `(value, GGUFValueType.X)`), then `tensors` in order.

    progress(bytes_done, bytes_total) is called as tensor data is written. `data` gives the
    contents of some tensors (float values to encode, or raw uint8 blocks) for fill="random".
    """
    _check_inputs(arch, metadata, tensors, fill, alignment, data)
    return _write_files([Path(path)], arch, metadata, [list(tensors)], False,
                        fill=fill, seed=seed, alignment=alignment, progress=progress, data=data)[0]


def split_paths(path_prefix: str | os.PathLike[str], n_splits: int) -> list[Path]:
    """`<prefix>-00001-of-0000N.gguf` ... as llama.cpp's llama_split_path names them."""
    prefix = Path(path_prefix)
    if prefix.suffix == ".gguf":
        prefix = prefix.with_suffix("")
    return [prefix.with_name(f"{prefix.name}-{i:05d}-of-{n_splits:05d}.gguf") for i in range(1, n_splits + 1)]


def _split_groups(tensors: Sequence[TensorSpec], n_splits: int, alignment: int) -> list[list[TensorSpec]]:
    """Consecutive runs of tensors of about equal bytes, none empty (gguf-split refuses empty shards)."""
    total = data_size(tensors, alignment)
    groups: list[list[TensorSpec]] = [[] for _ in range(n_splits)]
    before = 0
    for i, spec in enumerate(tensors):
        last = max((k for k, g in enumerate(groups) if g), default=-1)
        shard = min(n_splits - 1, before * n_splits // max(total, 1))
        shard = min(max(shard, last), last + 1)  # in order, skipping no shard
        shard = max(shard, n_splits - (len(tensors) - i))  # leave a tensor for each shard after this one
        groups[shard].append(spec)
        before += _pad(spec.nbytes, alignment)
    return groups


def write_split_gguf(path_prefix: str | os.PathLike[str], arch: str, metadata: Mapping[str, Any],
                     tensors: Sequence[TensorSpec], n_splits: int, *, fill: str = "random", seed: int = 0,
                     alignment: int = 32, progress: Callable[[int, int], None] | None = None,
                     data: Mapping[str, np.ndarray] | None = None) -> list[Path]:
    """The same model as write_gguf, split as llama.cpp's gguf-split does: every shard has its own
    header with the tensors it holds and split.no / split.count / split.tensors.count; the metadata
    is in the first shard only. Tensor data is the same bytes the unsplit file would hold."""
    _check_inputs(arch, metadata, tensors, fill, alignment, data)
    if not 1 <= n_splits <= len(tensors):
        raise BadInput(f"cannot split {len(tensors)} tensors into {n_splits} files",
                       "use between 1 and the number of tensors")
    return _write_files(split_paths(path_prefix, n_splits), arch, metadata,
                        _split_groups(tensors, n_splits, alignment), True,
                        fill=fill, seed=seed, alignment=alignment, progress=progress, data=data)
