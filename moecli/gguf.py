"""Model facts from GGUF headers, local or remote, without reading tensor data.

A small streaming parser of GGUF v2/v3 (the layout llama.cpp's ggml/src/gguf.cpp reads) over a byte
source: a local file, or any `ByteSource` (moecli.hub.remote reads the Hub's files by range
requests), so a 20 GB model can be planned from the few MB of its header. `gguf.GGUFReader` memory-maps the whole file and parses every array
eagerly; here the tokenizer arrays are skipped (their lengths kept), and every count and length is
checked against the bytes that can follow, so a damaged header fails with a `ModelFileError`
instead of hanging or allocating gigabytes.

`read_model` then merges split shards (`<prefix>-00001-of-0000N.gguf`), checks that the data the
header declares is all there, and classifies every tensor by llama.cpp's naming (src/llama-arch.cpp,
gguf.TENSOR_NAMES) with the per-architecture rules of `moecli.archs`.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from moecli import archs
from moecli.errors import ModelFileError
from moecli.facts import ModelFacts, Role, ShardInfo, TensorInfo
from moecli.units import KiB, MiB, fmt_bytes

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and llama.cpp no longer reads it
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT

# Reads of a source: the first fetches FIRST_CHUNK, each further one twice the last, up to
# MAX_CHUNK (for a remote source, each read is one HTTP request). A header of ~10 MB (a 248K-token
# vocabulary) costs 6 requests and at most MAX_CHUNK bytes more than the header itself
# (tests/test_gguf.py, test_remote_read_fetches_about_the_header_and_equals_local).
FIRST_CHUNK = 256 * KiB
MAX_CHUNK = 4 * MiB

# Sanity limits on a header (llama.cpp's own: 1 GiB strings and arrays, names < GGML_MAX_NAME).
MAX_HEADER_BYTES = 512 * MiB  # no real header comes close (a 248K-token vocabulary is ~10 MB)
MAX_KEY_BYTES = 64 * KiB
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME = 64, including the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_COUNT = 1 << 24  # key/value pairs or tensors in one header
KEPT_STRING_BYTES = 1 * MiB  # longer metadata strings are skipped...
KEPT_TEMPLATE_BYTES = 16 * MiB  # ...except chat templates, kept up to this
KEPT_ARRAY_ITEMS = 4096  # numeric arrays up to this long are kept (per-layer head counts, ...)
_INT64_MAX = 2**63 - 1

# GGUF value types (gguf.GGUFValueType): struct code and size of the fixed-size ones
_FIXED = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
          7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9

_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# byte sources


@runtime_checkable
class ByteSource(Protocol):
    """Where a GGUF file's bytes come from: a local file (here), or any other reader, such as the
    Hub's files read by range requests (moecli.hub.remote).

    `read(offset, n)` returns the bytes at [offset, offset + n): fewer only where the file ends,
    none past its end. It raises SourceNotFound when there is no file at `location`, and another
    ModelFileError for any other failure. `size` is the file's size, None while it is not known
    (a remote file's size comes with the answer to its first read)."""

    location: str  # where the file is: kept in ModelFacts.shards; a split model's shards are named from it
    name: str  # the file's name, for messages

    @property
    def size(self) -> int | None: ...

    def read(self, offset: int, n: int) -> bytes: ...


class SourceNotFound(ModelFileError):
    """There is no file where a byte source looked: for a shard, the message names the missing shard."""


OpenShard = Callable[[str], ByteSource]  # a shard's location -> its bytes


def not_regular(path: Path) -> str:
    """What a path that exists but is not a regular file is, in words."""
    import stat

    mode = path.stat().st_mode
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return f"a link to {os.path.realpath(path)}, {kind}" if path.is_symlink() else kind


class _LocalFile:
    def __init__(self, path: str) -> None:
        self.location = path
        self.name = os.path.basename(path) or path
        p = Path(path)
        if not p.exists():
            raise SourceNotFound(f"{path} does not exist",
                                 "check the path, or pull the model first: moecli pull REPO:QUANT")
        if p.is_dir():
            raise ModelFileError(f"{path} is a directory, not a GGUF file", "name the .gguf file inside it")
        if not p.is_file():  # opening a FIFO would wait for a writer; /dev/zero never ends
            raise ModelFileError(f"{path} is {not_regular(p)}, not a regular file", "name a .gguf file")
        try:
            self._file = open(p, "rb")  # closed by close()
        except OSError as exc:
            raise ModelFileError(f"cannot open {path}: {exc.strerror}", "check its permissions") from None
        self.size: int | None = os.fstat(self._file.fileno()).st_size

    def read(self, offset: int, n: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------
# a forward cursor over a growing window of the source


class _Truncated(Exception):
    def __init__(self, needed: int) -> None:
        self.needed = needed


class _Corrupt(Exception):
    pass


class _Cursor:
    """Reads forward through a source, fetching chunks that double in size; skipped regions are
    not fetched at all when they lie past the current window."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.buf = b""
        self.buf_start = 0  # file offset of buf[0]
        self.pos = 0
        self.chunk = FIRST_CHUNK
        self.bytes_fetched = 0
        self.requests = 0  # reads of the source (HTTP requests for a remote one)

    @property
    def limit(self) -> int:
        """Where the header must end: the end of the file, and at most MAX_HEADER_BYTES."""
        size = self.source.size
        return min(size, MAX_HEADER_BYTES) if size is not None else MAX_HEADER_BYTES

    def remaining(self) -> int:
        return max(self.limit - self.pos, 0)

    def _past_limit(self, end: int) -> Exception:
        size = self.source.size
        if size is not None and end <= size:  # inside the file: only the header cap was hit
            return _Corrupt(f"its header would be larger than {fmt_bytes(MAX_HEADER_BYTES)}")
        return _Truncated(end)

    def _fill(self, n: int) -> None:
        """Make buf cover [pos, pos + n)."""
        end = self.pos + n
        if end > self.limit:
            raise self._past_limit(end)
        buf_end = self.buf_start + len(self.buf)
        keep = self.buf[self.pos - self.buf_start:] if self.pos < buf_end else b""
        start = max(buf_end, self.pos)
        want = min(max(end - start, self.chunk), self.limit - start)
        self.chunk = min(self.chunk * 2, MAX_CHUNK)
        data = self.source.read(start, want)
        self.requests += 1
        self.bytes_fetched += len(data)
        self.buf = keep + data
        self.buf_start = self.pos
        if len(self.buf) < n:  # the file ended first
            raise _Truncated(end)

    def take(self, n: int) -> bytes:
        if self.pos + n > self.buf_start + len(self.buf):
            self._fill(n)
        i = self.pos - self.buf_start
        self.pos += n
        return self.buf[i:i + n]

    def unpack(self, fmt: struct.Struct) -> tuple:
        if self.pos + fmt.size > self.buf_start + len(self.buf):
            self._fill(fmt.size)
        values = fmt.unpack_from(self.buf, self.pos - self.buf_start)
        self.pos += fmt.size
        return values

    def skip(self, n: int) -> None:
        if n > self.remaining():
            raise self._past_limit(self.pos + n)
        self.pos += n

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def check_fits(self, n: int, item_size: int, what: str, plausible: int = MAX_HEADER_BYTES) -> None:
        """n items of at least item_size bytes must fit in what is left: when they do not, a
        plausible n means the file was cut short, an absurd one that the header is damaged."""
        if n * item_size <= self.remaining():
            return
        if n * item_size > plausible:
            raise _Corrupt(f"{what} claims {n:,} items but only {self.remaining():,} bytes follow")
        raise self._past_limit(self.pos + n * item_size)

    def length(self, what: str, item_size: int = 1) -> int:
        """A u64 count of items that must fit in what is left of the file."""
        n = self.u64()
        self.check_fits(n, item_size, what)
        return n

    def string(self, what: str, max_bytes: int) -> str | None:
        """A GGUF string; None (skipped, not read) when longer than max_bytes."""
        n = self.length(what)
        if n > max_bytes:
            self.skip(n)
            return None
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` strings: the tokenizer's hundreds of thousands, in a tight loop."""
        unpack_from = _U64.unpack_from
        while count:
            buf, start = self.buf, self.buf_start
            i = self.pos - start
            # Only the length fields are read; a string's bytes may lie past the window. The loop
            # stops (struct.error) at the first length field the window does not hold.
            done = 0
            try:
                for done in range(1, min(count, max(len(buf) - i, 0) // 8) + 1):  # noqa: B007 - counted after the loop
                    i += 8 + unpack_from(buf, i)[0]
                else:
                    done += 1
            except (struct.error, OverflowError):  # past the window, or an absurd length before it
                pass
            count -= done - 1
            self.pos = start + i
            if self.pos > self.limit:
                raise self._past_limit(self.pos)
            if count:  # the next length field crosses the window's end
                self.skip(self.length(what))
                count -= 1


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, offset


# ---------------------------------------------------------------------------------------------
# the header


class RawTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    n_bytes: int
    offset: int  # absolute, in its file


@dataclass(frozen=True)
class GgufHeader:
    """One GGUF file's header: metadata (scalars, the chat template, small numeric arrays as
    tuples), the length of every array, and every tensor's place in the file."""

    location: str
    name: str  # file name
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[RawTensor, ...]
    data_offset: int  # where tensor data starts: the header's size with its alignment padding
    expected_size: int  # data_offset + the end of the last tensor
    file_size: int | None  # None for a source that does not know (a server that did not say)
    bytes_fetched: int  # bytes read from the source to parse this header
    requests: int  # reads of the source (HTTP requests for a remote file)


def read_header(where: str | os.PathLike[str] | ByteSource) -> GgufHeader:
    """Parse the header of one GGUF file (a path, or a byte source) without reading tensor data."""
    if isinstance(where, ByteSource):
        return _parse(where)
    source = _LocalFile(os.fspath(where))
    try:
        return _parse(source)
    finally:
        source.close()


def _bad_header(name: str, detail: str) -> ModelFileError:
    return ModelFileError(f"{name} has a corrupt GGUF header: {detail}",
                          "the file is damaged: download it again")


def _parse(source: ByteSource) -> GgufHeader:
    cur = _Cursor(source)
    name = source.name
    try:
        return _parse_header(cur, source)
    except _Truncated as exc:
        if cur.pos < 8:
            size = f"only {source.size} bytes" if source.size is not None else "too short"
            raise ModelFileError(f"{name} is not a GGUF file (it is {size})", "name a .gguf model file") from None
        size = fmt_bytes(source.size) if source.size is not None else "unknown size"
        raise ModelFileError(f"{name} is truncated: its GGUF header runs past the end of the file "
                             f"(needs at least {exc.needed:,} bytes, has {size})",
                             "the download is incomplete: download it again") from None
    except _Corrupt as exc:
        raise _bad_header(name, str(exc)) from None


def _parse_header(cur: _Cursor, source: ByteSource) -> GgufHeader:
    name = source.name
    magic = cur.take(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{name} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                             "name a .gguf model file (safetensors and other formats must be converted first)")
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack("<I", struct.pack(">I", version))[0] in SUPPORTED_VERSIONS:
            raise ModelFileError(f"{name} is a big-endian GGUF file",
                                 "llama.cpp reads little-endian GGUF on this machine: get the little-endian file")
        raise ModelFileError(f"{name} is GGUF version {version}; llama.cpp reads versions 2 and 3",
                             "convert or download the model again with a current llama.cpp")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > MAX_COUNT:
        raise _Corrupt(f"it claims {n_tensors:,} tensors")
    if n_kv > MAX_COUNT:
        raise _Corrupt(f"it claims {n_kv:,} metadata keys")
    cur.check_fits(n_tensors, 33, "the tensor list")  # a tensor info takes >= 33 bytes
    cur.check_fits(n_kv, 13, "the metadata")  # a key/value pair takes >= 13 bytes

    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key", MAX_KEY_BYTES)
        if not key:
            raise _Corrupt("a metadata key is empty or too long")
        if key in metadata or key in array_lengths:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        vtype = cur.u32()
        if vtype == _ARRAY:
            _read_array(cur, key, metadata, array_lengths)
        else:
            value = _read_value(cur, key, vtype)
            if value is not None:
                metadata[key] = value

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment {alignment!r} is not a power of 2")

    infos = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        tname = cur.string("a tensor name", MAX_TENSOR_NAME)
        if tname is None:
            raise _Corrupt(f"a tensor name is longer than {MAX_TENSOR_NAME} bytes")
        if tname in seen:
            raise _Corrupt(f"tensor {tname!r} appears twice")
        seen.add(tname)
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {tname} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = cur.unpack(struct.Struct(f"<{n_dims}Q")) if n_dims else ()
        type_id, offset = cur.unpack(_TENSOR_TAIL)
        infos.append((tname, shape, type_id, offset))

    data_offset = _align(cur.pos, alignment) if infos else cur.pos  # gguf.cpp pads only before data
    tensors = []
    expected_offset = 0
    for tname, shape, type_id, offset in infos:
        type_name, n_bytes = _tensor_size(tname, shape, type_id)
        if offset != expected_offset:  # gguf.cpp: tensor data is laid out in order, each aligned
            raise _Corrupt(f"tensor {tname} has data offset {offset:,}, expected {expected_offset:,}")
        tensors.append(RawTensor(tname, shape, type_name, n_bytes, data_offset + offset))
        expected_offset += _align(n_bytes, alignment)
    expected_size = max((t.offset + t.n_bytes for t in tensors), default=data_offset)

    return GgufHeader(
        location=source.location, name=name, version=version, metadata=metadata,
        array_lengths=array_lengths, tensors=tuple(tensors), data_offset=data_offset,
        expected_size=expected_size, file_size=source.size,
        bytes_fetched=cur.bytes_fetched, requests=cur.requests,
    )


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _tensor_size(name: str, shape: tuple[int, ...], type_id: int) -> tuple[str, int]:
    try:
        qtype = GGMLQuantizationType(type_id)
        block, size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(f"tensor {name} has ggml type {type_id}, which this version of the gguf package "
                             "does not know", "update moecli (and its gguf dependency), or use another quant") from None
    n = 1
    for d in shape:
        if d > _INT64_MAX or (d and n > _INT64_MAX // d):
            raise _Corrupt(f"tensor {name} has an impossible shape {shape}")
        n *= d
    if shape and shape[0] % block:
        raise _Corrupt(f"tensor {name}: a row of {shape[0]} is not whole {qtype.name} blocks of {block}")
    return qtype.name, n // block * size


def _read_value(cur: _Cursor, key: str, vtype: int) -> Any:
    if vtype == _STRING:
        keep = KEPT_TEMPLATE_BYTES if key.startswith("tokenizer.chat_template") else KEPT_STRING_BYTES
        return cur.string(f"metadata {key}", keep)
    fixed = _FIXED.get(vtype)
    if fixed is None:
        raise _Corrupt(f"metadata {key} has unknown value type {vtype}")
    return cur.unpack(_STRUCTS[vtype])[0]


_STRUCTS = {t: struct.Struct("<" + code) for t, (code, _) in _FIXED.items()}


def _read_array(cur: _Cursor, key: str, metadata: dict[str, Any], array_lengths: dict[str, int]) -> None:
    item_type = cur.u32()
    if item_type == _STRING:
        n = cur.length(f"array {key}", 8)  # each string has at least its 8-byte length
        array_lengths[key] = n
        cur.skip_strings(n, f"a string in {key}")
        return
    fixed = _FIXED.get(item_type)
    if fixed is None:  # nested arrays included: llama.cpp refuses them too
        raise _Corrupt(f"array {key} has unsupported item type {item_type}")
    code, size = fixed
    n = cur.length(f"array {key}", size)
    array_lengths[key] = n
    if n <= KEPT_ARRAY_ITEMS and not key.startswith("tokenizer."):
        metadata[key] = cur.unpack(struct.Struct(f"<{n}{code}")) if n else ()
    else:
        cur.skip(n * size)


# ---------------------------------------------------------------------------------------------
# classification (llama.cpp tensor names: src/llama-arch.cpp LLM_TENSOR_NAMES)

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_SUFFIX = re.compile(r"\.(weight|bias|scale|scales)$")
_EXPERT = re.compile(r"^ffn_(up|down|gate|gate_up)_(ch)?exps$|^ffn_(up|down|gate)\.\d+$")
_ROUTER = frozenset({"ffn_gate_inp", "exp_probs_b", "exp_probs_b_vl", "ffn_gate_tid2eid"})
_GLOBAL = {
    "token_embd": Role.EMBEDDING, "position_embd": Role.EMBEDDING, "token_types": Role.EMBEDDING,
    "per_layer_token_embd": Role.EMBEDDING,
    "output": Role.OUTPUT, "cls": Role.OUTPUT, "cls.output": Role.OUTPUT,
    "dense_2": Role.OUTPUT, "dense_3": Role.OUTPUT,  # sentence-transformers projections after pooling
}
_RECURRENT_PREFIXES = ("ssm_", "time_mix_", "shortconv.")
_ATTENTION_PREFIXES = ("attn_", "indexer", "vis_attn_")
_FFN_PREFIXES = ("ffn_", "channel_mix_", "vis_gate", "vis_up", "vis_down")


def classify(name: str) -> tuple[Role, int | None]:
    """Role and layer of a tensor from its llama.cpp name, e.g. `blk.7.ffn_down_exps.weight` ->
    (EXPERT, 7). Architecture context (MTP layers, linear-attention layers) is applied by read_model."""
    m = _BLOCK.match(name)
    layer = int(m.group(1)) if m else None
    base = _SUFFIX.sub("", m.group(2) if m else name)
    return _role_of(base, global_=m is None), layer


def _role_of(base: str, global_: bool) -> Role:
    if _EXPERT.match(base):
        return Role.EXPERT  # routed experts and their biases (gpt-oss)
    if base.startswith("ffn_") and base.endswith("_shexp"):
        return Role.SHARED_EXPERT  # incl. ffn_gate_inp_shexp, the shared expert's own gate
    if base in _ROUTER:
        return Role.ROUTER
    if "norm" in base:
        return Role.NORM
    if global_:
        return _GLOBAL.get(base, Role.OTHER)
    if base.startswith(_RECURRENT_PREFIXES):
        return Role.RECURRENT
    if base.startswith(_ATTENTION_PREFIXES):
        return Role.ATTENTION
    if base.startswith(_FFN_PREFIXES):
        return Role.FFN
    if base == "nextn.embed_tokens":
        return Role.EMBEDDING
    if base == "nextn.shared_head_head":
        return Role.OUTPUT
    return Role.OTHER


# ---------------------------------------------------------------------------------------------
# the model: shards, size checks, facts


def split_info(path: str) -> tuple[str, int, int]:
    """`dir/X-00002-of-00003.gguf` -> ("dir/X", 2, 3), llama.cpp's gguf-split naming; any other
    name is shard 1 of 1 (its prefix: the name without `.gguf`)."""
    m = _SPLIT_NAME.match(path)
    if m:
        return m["prefix"], int(m["no"]), int(m["count"])
    return (path[: -len(".gguf")] if path.lower().endswith(".gguf") else path), 1, 1


def shard_locations(location: str, count: int) -> list[str]:
    """All shard names of a split model, given any one of them (llama.cpp's llama_split_path:
    `<prefix>-%05d-of-%05d.gguf`); URLs keep their query string."""
    parts = urlsplit(location) if _is_url(location) else None
    path = parts.path if parts else location
    directory, base = os.path.split(path) if not parts else path.rsplit("/", 1)
    m = _SPLIT_NAME.match(base)
    if not m:
        raise ValueError(f"{base} is not named like a split shard")
    names = [f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    if parts:
        return [urlunsplit(parts._replace(path=f"{directory}/{n}")) for n in names]
    return [os.path.join(directory, n) for n in names]


def _split_count(header: GgufHeader) -> int:
    count = header.metadata.get("split.count", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else 1


def _read_shard(loc: str, index: int, count: int, open_shard: OpenShard | None) -> GgufHeader:
    try:
        return read_header(open_shard(loc) if open_shard else loc)
    except SourceNotFound:
        raise ModelFileError(f"shard {index + 1} of {count} is missing: {loc}",
                             f"download all {count} files of the model into one folder (moecli pull fetches them all)"
                             ) from None


def _read_shards(location: str, given: GgufHeader, open_shard: OpenShard | None) -> list[GgufHeader]:
    """Every header of the model: [given] for a single file; all N for a split one, in order,
    whichever shard was named."""
    count = _split_count(given)
    if count == 1:
        return [given]
    if not _SPLIT_NAME.match(given.name):
        raise ModelFileError(f"{given.name} is part of a {count}-file split model but is not named "
                             f"<prefix>-00001-of-{count:05d}.gguf, so its other files cannot be found",
                             "keep the shard names llama.cpp's gguf-split gave them")
    out = []
    for i, loc in enumerate(shard_locations(location, count)):
        header = given if _base_name(loc) == given.name else _read_shard(loc, i, count, open_shard)
        no = header.metadata.get("split.no", i)
        if "split.count" not in header.metadata:  # a whole model named like a shard
            raise ModelFileError(f"{header.name} is not a shard of a split model (it has no split.count), but its "
                                 f"name says shard {i + 1} of {count}",
                                 "the shards come from different models or were renamed: download them again")
        if no != i or _split_count(header) != count:
            raise ModelFileError(f"{header.name} says it is shard {no + 1 if isinstance(no, int) else no} of "
                                 f"{_split_count(header)}, but its name says {i + 1} of {count}",
                                 "the shards come from different models or were renamed: download them again")
        out.append(header)
    return out


def _base_name(loc: str) -> str:
    return os.path.basename(urlsplit(loc).path) if _is_url(loc) else os.path.basename(loc)


def _check_complete(header: GgufHeader) -> None:
    """A file shorter than the tensor data its header declares is a truncated download."""
    size = header.file_size
    if size is None or size >= header.expected_size:
        return
    missing = header.expected_size - size
    beyond = [t.name for t in header.tensors if t.offset + t.n_bytes > size]
    raise ModelFileError(
        f"{header.name} is truncated: {fmt_bytes(missing)} of tensor data missing "
        f"(has {fmt_bytes(size)} of {fmt_bytes(header.expected_size)}; {len(beyond)} tensor(s) cut off, "
        f"first {beyond[0]})",
        "the download did not finish: resume or repeat it (moecli pull)")


def _file_type(value: Any) -> str | None:
    try:
        name = LlamaFileType(value).name
    except (ValueError, TypeError):
        return None
    if name == "GUESSED":
        return None
    return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")


def _model_name(metadata: Mapping[str, Any], file_name: str) -> str:
    name = metadata.get("general.name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    stem = file_name.removesuffix(".gguf")
    m = _SPLIT_NAME.match(file_name)
    return m.group("prefix") if m else stem


def _check_is_model(header: GgufHeader) -> str:
    meta = header.metadata
    arch = meta.get("general.architecture")
    if meta.get("general.type") == "adapter":
        raise ModelFileError(f"{header.name} is a LoRA adapter, not a model", "name the base model's .gguf file")
    if arch == "clip" or meta.get("general.type") == "mmproj":
        raise ModelFileError(f"{header.name} is a vision projector (mmproj), not a language model",
                             "name the model's main .gguf file; the mmproj file is only needed for images")
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{header.name} has no general.architecture: it is not a llama.cpp model",
                             "name a model .gguf file (the first shard of a split model)")
    return arch


def read_model(where: str | os.PathLike[str] | ByteSource, *, open_shard: OpenShard | None = None,
               source: str | None = None) -> ModelFacts:
    """Read a model's GGUF header(s) — a local path or a byte source, a single file or any shard
    of a split one — into ModelFacts, without reading tensor data.

    open_shard: how to read another shard of a split model, given its location (named from
    `where`'s location as llama.cpp names shards); local files by default, and required when
    `where` is a byte source. source: what the user named, kept in facts.
    """
    if isinstance(where, ByteSource):
        if open_shard is None:  # the shards of a split model would be looked for as local files
            raise TypeError("read_model of a byte source needs open_shard")
        loc = where.location
    else:
        loc = os.fspath(where)
    shards = _read_shards(loc, read_header(where), open_shard)
    for header in shards:
        _check_complete(header)
    head = shards[0]
    arch = _check_is_model(head)

    shapes = {t.name: t.shape for h in shards for t in h.tensors}
    if sum(len(h.tensors) for h in shards) != len(shapes):
        raise ModelFileError(f"{head.name}: the same tensor appears in two shards",
                             "the shards come from different models: download them again")
    declared = head.metadata.get("split.tensors.count")
    if len(shards) > 1 and isinstance(declared, int) and declared != len(shapes):
        raise ModelFileError(f"{head.name}: the shards hold {len(shapes)} tensors, the first says {declared}",
                             "the shards come from different models: download them again")

    hp = archs.describe(arch, head.metadata, tensor_shapes=shapes,
                        n_tokens=head.array_lengths.get("tokenizer.ggml.tokens"), where=head.name)
    tensors = []
    for index, header in enumerate(shards):
        for raw in header.tensors:
            role, layer = classify(raw.name)
            if layer is not None and layer >= hp.n_layer:
                role = Role.MTP  # llama.cpp loads these only for MTP decoding (load_mtp)
            elif layer is not None and role is Role.ATTENTION and hp.is_recurrent_only(layer):
                role = Role.RECURRENT  # Gated DeltaNet's qkv/gate projections
            tensors.append(TensorInfo(name=raw.name, shape=raw.shape, ggml_type=raw.ggml_type,
                                      n_bytes=raw.n_bytes, offset=raw.offset, shard=index, layer=layer, role=role))

    return ModelFacts(
        source=source or loc,
        arch=arch,
        name=_model_name(head.metadata, head.name),
        file_type=_file_type(head.metadata.get("general.file_type")),
        n_layer=hp.n_layer,
        n_embd=hp.n_embd,
        n_vocab=hp.n_vocab,
        n_ctx_train=hp.n_ctx_train,
        n_expert=hp.n_expert,
        n_expert_used=hp.n_expert_used,
        n_expert_shared=hp.n_expert_shared,
        kv_layers=hp.kv_layers,
        recurrent_state_bytes=hp.recurrent_state_bytes,
        tensors=tuple(tensors),
        shards=tuple(ShardInfo(location=h.location, data_offset=h.data_offset, expected_size=h.expected_size,
                               actual_size=h.file_size) for h in shards),
        metadata=dict(head.metadata),
    )

