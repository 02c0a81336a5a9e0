"""moecli.gguf: reading GGUF headers from files, split files and HTTP, and refusing bad ones."""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf as gguf_pkg
import pytest
from archspecs import mixtral_8x7b, qwen36_35b_a3b
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moecli.errors import ModelFileError
from moecli.facts import Role
from moecli.gguf import FIRST_CHUNK, MAX_CHUNK, SourceNotFound, classify, read_header, read_model, shard_locations
from moecli.hub.remote import open_url
from moecli.synth import TensorSpec, write_gguf, write_split_gguf
from moecli.units import fmt_bytes


def _tiny_tensors(n_layer: int = 2) -> list[TensorSpec]:
    ts = [TensorSpec("token_embd.weight", (256, 1000), "Q4_K")]
    for i in range(n_layer):
        ts += [
            TensorSpec(f"blk.{i}.attn_norm.weight", (256,), "F32"),
            TensorSpec(f"blk.{i}.attn_q.weight", (256, 256), "Q8_0"),
            TensorSpec(f"blk.{i}.attn_k.weight", (256, 128), "Q8_0"),
            TensorSpec(f"blk.{i}.attn_v.weight", (256, 128), "Q8_0"),
            TensorSpec(f"blk.{i}.attn_output.weight", (256, 256), "Q8_0"),
            TensorSpec(f"blk.{i}.ffn_gate_inp.weight", (256, 4), "F32"),
            TensorSpec(f"blk.{i}.ffn_gate_exps.weight", (256, 512, 4), "Q4_K"),
            TensorSpec(f"blk.{i}.ffn_up_exps.weight", (256, 512, 4), "Q4_K"),
            TensorSpec(f"blk.{i}.ffn_down_exps.weight", (512, 256, 4), "Q4_K"),
        ]
    return ts + [TensorSpec("output_norm.weight", (256,), "F32"), TensorSpec("output.weight", (256, 1000), "Q6_K")]


TINY_META = {
    "general.name": "tiny-moe", "general.file_type": 15,
    "llama.block_count": 2, "llama.context_length": 4096, "llama.embedding_length": 256,
    "llama.feed_forward_length": 512, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
    "llama.expert_count": 4, "llama.expert_used_count": 2, "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.tokens": [f"t{i}" for i in range(1000)],
    "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
}


def write_tiny(directory: Path, name: str = "tiny.gguf", **meta) -> Path:
    return write_gguf(directory / name, "llama", {**TINY_META, **meta}, _tiny_tensors(), fill="zeros")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def qwen36(tmp_path_factory) -> Path:
    """Qwen3.6-35B-A3B's header with a full-size tokenizer (248K tokens, ~10 MB header)."""
    return qwen36_35b_a3b(vocab=True).write(tmp_path_factory.mktemp("qwen36"))


def _facts_without_locations(facts):
    shards = tuple(dataclasses.replace(s, location="") for s in facts.shards)
    return dataclasses.replace(facts, source="", shards=shards)


# ---------------------------------------------------------------------------------------------
# local files


def test_local_header_matches_gguf_reader(tiny):
    """Names, shapes, types, sizes and absolute offsets agree with the gguf package's own reader."""
    header = read_header(tiny)
    reader = gguf_pkg.GGUFReader(tiny)
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(header.tensors, reader.tensors):
        assert mine.shape == tuple(int(d) for d in theirs.shape)
        assert mine.ggml_type == theirs.tensor_type.name
        assert mine.n_bytes == theirs.n_bytes
        assert mine.offset == theirs.data_offset
    assert header.data_offset == reader.data_offset
    assert header.version == 3
    assert header.file_size == tiny.stat().st_size >= header.expected_size


def test_metadata_keeps_scalars_and_template_not_vocab(tiny):
    facts = read_model(tiny)
    meta = facts.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2
    assert meta["llama.rope.freq_base"] == 10000.0
    assert meta["tokenizer.chat_template"] == TINY_META["tokenizer.chat_template"]
    assert "tokenizer.ggml.tokens" not in meta
    assert read_header(tiny).array_lengths["tokenizer.ggml.tokens"] == 1000
    assert facts.n_vocab == 1000


def test_small_numeric_arrays_are_kept_as_tuples(tmp_path):
    path = write_tiny(tmp_path, **{"llama.attention.head_count_kv": [2, 1]})
    facts = read_model(path)
    assert facts.metadata["llama.attention.head_count_kv"] == (2, 1)
    # per-layer KV heads: layer 0 has 2 x 64, layer 1 has 1 x 64 (head size 256 / 4 heads)
    assert [(kv.layer, kv.n_embd_k, kv.n_embd_v) for kv in facts.kv_layers] == [(0, 128, 128), (1, 64, 64)]


def test_model_facts_of_a_small_moe(tiny):
    facts = read_model(tiny)
    assert (facts.arch, facts.name, facts.file_type) == ("llama", "tiny-moe", "Q4_K_M")
    assert (facts.n_layer, facts.n_embd, facts.n_ctx_train) == (2, 256, 4096)
    assert (facts.n_expert, facts.n_expert_used, facts.n_expert_shared) == (4, 2, 0)
    assert facts.is_moe and facts.expert_layers() == (0, 1)
    roles = {t.name: (t.role, t.layer) for t in facts.tensors}
    assert roles["blk.1.ffn_down_exps.weight"] == (Role.EXPERT, 1)
    assert roles["blk.0.ffn_gate_inp.weight"] == (Role.ROUTER, 0)
    assert roles["token_embd.weight"] == (Role.EMBEDDING, None)
    assert roles["output.weight"] == (Role.OUTPUT, None)
    assert roles["output_norm.weight"] == (Role.NORM, None)
    assert all(t.shard == 0 for t in facts.tensors)
    shard = facts.shards[0]
    assert shard.actual_size == tiny.stat().st_size and shard.expected_size <= shard.actual_size


def test_name_falls_back_to_the_file_name(tmp_path):
    meta = {k: v for k, v in TINY_META.items() if k != "general.name"}
    path = write_gguf(tmp_path / "My-Model-Q4_K_M.gguf", "llama", meta, _tiny_tensors(), fill="sparse")
    assert read_model(path).name == "My-Model-Q4_K_M"


def test_reading_a_qwen36_header(qwen36):
    """~730 tensors and a 248K-token tokenizer (10 MB of header). How fast: scripts/bench_plan.py."""
    facts = read_model(qwen36)
    assert facts.n_vocab == 248320 and len(facts.tensors) == 733


# ---------------------------------------------------------------------------------------------
# split files


@pytest.fixture(scope="module")
def split_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("split")
    paths = write_split_gguf(directory / "tiny", "llama", TINY_META, _tiny_tensors(), 3, fill="zeros")
    single = write_gguf(directory / "single.gguf", "llama", TINY_META, _tiny_tensors(), fill="zeros")
    return paths, single


@pytest.mark.parametrize("which", [0, 1, 2])
def test_split_model_reads_every_shard_from_any_one(split_model, which):
    paths, single = split_model
    facts = read_model(paths[which])
    whole = read_model(single)
    assert [t.name for t in facts.tensors] == [t.name for t in whole.tensors]
    assert [(t.shape, t.ggml_type, t.n_bytes, t.role, t.layer) for t in facts.tensors] == \
           [(t.shape, t.ggml_type, t.n_bytes, t.role, t.layer) for t in whole.tensors]
    assert [s.location for s in facts.shards] == [str(p) for p in paths]
    assert facts.n_bytes == whole.n_bytes and facts.kv_layers == whole.kv_layers
    assert facts.name == "tiny-moe"
    # every tensor's shard and offset agree with the gguf package reading that shard alone
    for index, path in enumerate(paths):
        reader = gguf_pkg.GGUFReader(path)
        offsets = {t.name: t.data_offset for t in reader.tensors}
        mine = {t.name: t.offset for t in facts.tensors if t.shard == index}
        assert mine == offsets


def test_shard_locations_for_paths_and_urls():
    assert shard_locations("/m/x-00002-of-00003.gguf", 3) == [
        "/m/x-00001-of-00003.gguf", "/m/x-00002-of-00003.gguf", "/m/x-00003-of-00003.gguf"]
    assert shard_locations("https://h/r/resolve/main/Q8/x-00001-of-00002.gguf?download=1", 2)[1] == \
        "https://h/r/resolve/main/Q8/x-00002-of-00002.gguf?download=1"


def test_missing_shard_is_named(tmp_path):
    paths = write_split_gguf(tmp_path / "m", "llama", TINY_META, _tiny_tensors(), 3, fill="sparse")
    paths[2].unlink()
    with pytest.raises(ModelFileError, match=r"shard 3 of 3 is missing: .*m-00003-of-00003\.gguf"):
        read_model(paths[0])
    paths[0].unlink()
    with pytest.raises(ModelFileError, match=r"shard 1 of 3 is missing: .*m-00001-of-00003\.gguf"):
        read_model(paths[1])


def test_renamed_shard_cannot_find_its_siblings(tmp_path):
    paths = write_split_gguf(tmp_path / "m", "llama", TINY_META, _tiny_tensors(), 2, fill="sparse")
    renamed = paths[0].rename(tmp_path / "model.gguf")
    with pytest.raises(ModelFileError, match="split model but is not named"):
        read_model(renamed)


# ---------------------------------------------------------------------------------------------
# any byte source


class _InMemory:
    """A gguf.ByteSource over bytes held in memory, its size known only after the first read."""

    def __init__(self, location: str, data: bytes | None) -> None:
        self.location, self.name, self.data, self.size = location, location.rsplit("/", 1)[-1], data, None

    def read(self, offset: int, n: int) -> bytes:
        if self.data is None:
            raise SourceNotFound(f"{self.location} is not here", "")
        self.size = len(self.data)
        return self.data[offset:offset + n]


def test_any_byte_source_reads_like_the_file(split_model):
    paths, _ = split_model
    held = {f"mem://m/{p.name}": p.read_bytes() for p in paths}

    def open_shard(location: str) -> _InMemory:
        return _InMemory(location, held.get(location))

    facts = read_model(open_shard(f"mem://m/{paths[1].name}"), open_shard=open_shard, source="mem")
    assert _facts_without_locations(facts) == _facts_without_locations(read_model(paths[1], source="mem"))
    assert [s.location for s in facts.shards] == list(held)
    del held[f"mem://m/{paths[2].name}"]
    with pytest.raises(ModelFileError, match=r"shard 3 of 3 is missing: mem://m/"):
        read_model(open_shard(f"mem://m/{paths[0].name}"), open_shard=open_shard)
    with pytest.raises(TypeError, match="open_shard"):  # its shards are not local files
        read_model(open_shard(f"mem://m/{paths[0].name}"))


# ---------------------------------------------------------------------------------------------
# remote files, through a real HTTP server on 127.0.0.1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        server = self.server
        route, _, name = self.path.lstrip("/").partition("/")
        name = name.split("?")[0]
        with server.lock:
            server.requests.append(self.path)
        if route == "redirect":
            return self._reply(302, headers={"Location": f"/files/{name}"})
        if route == "private" and self.headers.get("Authorization") != "Bearer s3cret":
            return self._reply(401)
        if route == "broken":
            return self._reply(500)
        path = server.root / name
        if not path.is_file():
            return self._reply(404)
        size = path.stat().st_size
        start, end = 0, size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and route != "norange":
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                return self._reply(416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        else:
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            try:
                while left:
                    chunk = f.read(min(left, 1 << 16))
                    self.wfile.write(chunk)
                    left -= len(chunk)
                    with server.lock:
                        server.bytes_sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client read what it needed

    def _reply(self, status, headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.lock = threading.Lock()
        self.reset()

    def handle_error(self, request, client_address):
        pass  # a client that closes early (it read what it needed) is not an error here

    def reset(self):
        self.bytes_sent = 0
        self.requests = []

    def url(self, route: str, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{route}/{name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, qwen36, split_model):
    root = tmp_path_factory.mktemp("served")
    os.symlink(qwen36, root / "qwen36.gguf")
    paths, _ = split_model
    for p in paths:
        os.symlink(p, root / p.name)
    write_tiny(root)
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def read_remote(url: str, headers: dict[str, str] | None = None):
    """read_model of a URL through the Hub's range reader (moecli.hub.remote), every shard alike."""
    return read_model(open_url(url, headers), open_shard=lambda shard: open_url(shard, headers))


def test_remote_read_fetches_about_the_header_and_equals_local(server, qwen36):
    server.reset()
    remote = read_remote(server.url("files", "qwen36.gguf"))
    local = read_model(qwen36)
    assert _facts_without_locations(remote) == _facts_without_locations(local)
    assert remote.metadata == local.metadata
    assert remote.shards[0].actual_size == qwen36.stat().st_size  # from Content-Range
    header_size = local.shards[0].data_offset  # ~10.5 MB of a 19.7 GB file
    assert header_size <= server.bytes_sent <= header_size + MAX_CHUNK
    assert len(server.requests) <= 7  # 256 KiB, doubling to 4 MiB chunks


def test_remote_small_header_costs_one_request(server):
    server.reset()
    facts = read_remote(server.url("files", "tiny.gguf"))
    assert facts.name == "tiny-moe"
    assert len(server.requests) == 1 and server.bytes_sent <= FIRST_CHUNK


def test_redirects_are_followed(server, tiny):
    server.reset()
    facts = read_remote(server.url("redirect", "tiny.gguf"))
    assert _facts_without_locations(facts) == _facts_without_locations(read_model(tiny))
    assert server.requests[0].startswith("/redirect/") and server.requests[1].startswith("/files/")


def test_auth_headers_are_sent(server):
    facts = read_remote(server.url("private", "tiny.gguf"), headers={"Authorization": "Bearer s3cret"})
    assert facts.name == "tiny-moe"
    with pytest.raises(ModelFileError, match=r"access denied \(HTTP 401\)") as info:
        read_remote(server.url("private", "tiny.gguf"))
    assert "HF_TOKEN" in info.value.hint


def test_server_without_range_support(server):
    facts = read_remote(server.url("norange", "tiny.gguf"))
    assert facts.name == "tiny-moe" and len(facts.tensors) == len(_tiny_tensors())


def test_remote_split_model(server, split_model):
    paths, single = split_model
    facts = read_remote(server.url("files", paths[1].name))
    assert [s.location for s in facts.shards] == [server.url("files", p.name) for p in paths]
    assert [t.name for t in facts.tensors] == [t.name for t in read_model(single).tensors]


def test_remote_missing_shard_is_named(server):
    # only shard 1 of "other" is on the server
    os.symlink(server.root / "tiny-00001-of-00003.gguf", server.root / "other-00001-of-00003.gguf")
    with pytest.raises(ModelFileError, match=r"shard 2 of 3 is missing: http://.*/files/other-00002-of-00003\.gguf"):
        read_remote(server.url("files", "other-00001-of-00003.gguf"))


def test_hub_token_goes_to_the_hub_only(server, monkeypatch):
    """Without explicit headers, the Hub's auth (HF_TOKEN) is sent to the Hub endpoint's host only."""
    monkeypatch.setenv("HF_TOKEN", "s3cret")
    port = server.server_address[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert read_remote(server.url("private", "tiny.gguf")).name == "tiny-moe"
    monkeypatch.setenv("HF_ENDPOINT", f"http://localhost:{port}")
    with pytest.raises(ModelFileError, match="access denied"):
        read_remote(server.url("private", "tiny.gguf"))


@pytest.mark.parametrize(("route", "message"), [
    ("files", r"was not found \(HTTP 404\)"),
    ("broken", r"HTTP 500"),
])
def test_remote_http_errors(server, route, message):
    with pytest.raises(ModelFileError, match=message):
        read_remote(server.url(route, "nothing-here.gguf"))


def test_offline_mode(server, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFileError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        read_remote(server.url("files", "tiny.gguf"))


def test_unreachable_host():
    with pytest.raises(ModelFileError, match="cannot reach 127.0.0.1:9"):
        read_remote("http://127.0.0.1:9/model.gguf")


# ---------------------------------------------------------------------------------------------
# bad files


def _header_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(read_header(path).data_offset)


def test_missing_path(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist") as info:
        read_model(tmp_path / "nope.gguf")
    assert "moecli pull" in info.value.hint


def test_directory(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        read_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GG", b"PK\x03\x04 a zip file", b"\x00" * 64])
def test_not_gguf(tmp_path, content):
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a GGUF file"):
        read_model(path)


@pytest.mark.parametrize(("version", "message"), [
    (1, "GGUF version 1; llama.cpp reads versions 2 and 3"),
    (4, "GGUF version 4"),
    (0x03000000, "big-endian"),
])
def test_unsupported_versions(tiny, tmp_path, version, message):
    data = bytearray(_header_bytes(tiny))
    data[4:8] = struct.pack("<I", version)
    path = tmp_path / "v.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=message):
        read_model(path)


def test_truncated_header(tiny, tmp_path):
    header = _header_bytes(tiny)
    path = tmp_path / "cut.gguf"
    for cut in (9, 24, 100, len(header) // 2, len(header) - 40):
        path.write_bytes(header[:cut])
        with pytest.raises(ModelFileError, match="truncated: its GGUF header runs past the end"):
            read_model(path)


def _patched(tiny: Path, tmp_path: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(tiny.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / "patched.gguf"
    path.write_bytes(data)
    return path


def _offset_of(data: bytes, needle: bytes) -> int:
    i = data.find(needle)
    assert i >= 0
    return i


@pytest.mark.parametrize(("where", "value", "message"), [
    ("n_tensors", 2**60, "claims 1,152,921,504,606,846,976 tensors"),
    ("n_kv", 2**40, "metadata keys"),
    ("key_length", 2**62, "claims"),
    ("tokens_count", 2**50, "array tokenizer.ggml.tokens claims"),
    ("value_type", 77, "unknown value type 77"),
    ("n_dims", 9, "9 dimensions"),
    ("ggml_type", 5, "ggml type 5"),
    ("tensor_offset", 12345, "data offset 12,345, expected"),
])
def test_corrupt_counts_and_fields(tiny, tmp_path, where, value, message):
    data = tiny.read_bytes()
    first_key = 24  # after magic, version, n_tensors, n_kv
    tokens = _offset_of(data, b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens")
    name = _offset_of(data, b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight")
    patch = {
        "n_tensors": (8, "<Q"), "n_kv": (16, "<Q"), "key_length": (first_key, "<Q"),
        "tokens_count": (tokens + 8, "<Q"),  # after the value type (ARRAY) and the item type
        "value_type": (first_key + 8 + len("general.architecture"), "<I"),
        "n_dims": (name, "<I"), "ggml_type": (name + 4 + 2 * 8, "<I"),  # type 5 (Q4_3) was removed
        "tensor_offset": (name + 4 + 2 * 8 + 4, "<Q"),
    }
    offset, fmt = patch[where]
    with pytest.raises(ModelFileError, match=message):
        read_model(_patched(tiny, tmp_path, offset, fmt, value))


def test_truncated_download_names_the_missing_bytes(tmp_path):
    path = mixtral_8x7b().write(tmp_path)  # sparse: 24.5 GiB of holes
    header = read_header(path)
    size = path.stat().st_size - 3 * 2**30
    os.truncate(path, size)
    with pytest.raises(ModelFileError) as info:
        read_model(path)
    first_cut = next(t.name for t in header.tensors if t.offset + t.n_bytes > size)
    assert first_cut.startswith("blk.28.")  # ~0.8 GiB per layer: the last 3.x layers are cut
    assert str(info.value) == (
        f"mixtral-8x7b.gguf is truncated: {fmt_bytes(header.expected_size - size)} of tensor data missing "
        f"(has {fmt_bytes(size)} of {fmt_bytes(header.expected_size)}; "
        f"{sum(t.offset + t.n_bytes > size for t in header.tensors)} tensor(s) cut off, first {first_cut})")
    assert f"{(header.expected_size - size) / 2**30:.2f} GiB of tensor data missing" in str(info.value)
    assert "moecli pull" in info.value.hint


def test_tensor_past_the_end_by_a_few_bytes(tiny, tmp_path):
    data = tiny.read_bytes()
    expected = read_header(tiny).expected_size
    path = tmp_path / "short.gguf"
    path.write_bytes(data[:expected - 10])
    with pytest.raises(ModelFileError, match=r"truncated: 10 B of tensor data missing.*first output\.weight"):
        read_model(path)


def test_vision_projectors_and_adapters_are_refused(tmp_path):
    mmproj = write_gguf(tmp_path / "mmproj.gguf", "clip", {"general.type": "mmproj"},
                        [TensorSpec("v.patch_embd.weight", (32, 32), "F16")], fill="sparse")
    with pytest.raises(ModelFileError, match=r"vision projector \(mmproj\)"):
        read_model(mmproj)
    lora = write_gguf(tmp_path / "lora.gguf", "llama", {"general.type": "adapter", "adapter.type": "lora"},
                      [TensorSpec("blk.0.attn_q.weight.lora_a", (256, 8), "F16")], fill="sparse")
    with pytest.raises(ModelFileError, match="is a LoRA adapter, not a model"):
        read_model(lora)


def test_missing_required_key(tmp_path):
    meta = {k: v for k, v in TINY_META.items() if k != "llama.block_count"}
    path = write_gguf(tmp_path / "m.gguf", "llama", meta, _tiny_tensors(), fill="sparse")
    with pytest.raises(ModelFileError, match="has no llama.block_count"):
        read_model(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_fail_cleanly(tiny, tmp_path, data):
    """Random byte flips and cuts in the header: a ModelFileError or a valid read, without
    allocating for absurd counts or lengths (bounded memory, not a wall-clock time)."""
    header = bytearray(_header_bytes(tiny))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(header)))
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(header[:cut]) + bytes(data.draw(st.integers(0, 4096))))
    tracemalloc.start()
    try:
        read_model(path)
    except ModelFileError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"reading a {path.stat().st_size}-byte file took {peak} bytes"


# ---------------------------------------------------------------------------------------------
# classification


@pytest.mark.parametrize(("name", "role", "layer"), [
    ("blk.3.ffn_up_exps.weight", Role.EXPERT, 3),
    ("blk.3.ffn_gate_up_exps.weight", Role.EXPERT, 3),
    ("blk.3.ffn_down_chexps.weight", Role.EXPERT, 3),
    ("blk.3.ffn_down_exps.bias", Role.EXPERT, 3),  # gpt-oss expert biases
    ("blk.3.ffn_gate.2.weight", Role.EXPERT, 3),  # legacy one-tensor-per-expert Mixtral files
    ("blk.3.ffn_up_shexp.weight", Role.SHARED_EXPERT, 3),
    ("blk.3.ffn_gate_inp_shexp.weight", Role.SHARED_EXPERT, 3),
    ("blk.3.ffn_gate_inp.weight", Role.ROUTER, 3),
    ("blk.3.ffn_gate_inp.bias", Role.ROUTER, 3),
    ("blk.3.exp_probs_b.bias", Role.ROUTER, 3),
    ("blk.3.ffn_up.weight", Role.FFN, 3),
    ("blk.3.attn_qkv.weight", Role.ATTENTION, 3),
    ("blk.3.attn_kv_a_mqa.weight", Role.ATTENTION, 3),
    ("blk.3.attn_k_b.weight", Role.ATTENTION, 3),
    ("blk.3.attn_gate.weight", Role.ATTENTION, 3),
    ("blk.3.attn_sinks.weight", Role.ATTENTION, 3),
    ("blk.3.attn_q_a_norm.weight", Role.NORM, 3),
    ("blk.3.ssm_conv1d.weight", Role.RECURRENT, 3),
    ("blk.3.ssm_a", Role.RECURRENT, 3),
    ("blk.3.time_mix_key.weight", Role.RECURRENT, 3),
    ("blk.3.post_attention_norm.weight", Role.NORM, 3),
    ("token_embd.weight", Role.EMBEDDING, None),
    ("output.weight", Role.OUTPUT, None),
    ("output_norm.weight", Role.NORM, None),
    ("rope_freqs.weight", Role.OTHER, None),
])
def test_classify(name, role, layer):
    assert classify(name) == (role, layer)


def test_every_language_model_tensor_name_has_a_role():
    """Every per-layer tensor llama.cpp names for the MoE architectures we plan gets a role."""
    archs = ["QWEN35MOE", "QWEN3MOE", "QWEN2MOE", "LLAMA", "DEEPSEEK", "DEEPSEEK2", "GROK", "JAMBA", "DBRX",
             "GPT_OSS", "GLM4_MOE", "QWEN3NEXT", "MAMBA2", "RWKV7", "LFM2", "GRANITE_HYBRID", "FALCON_H1"]
    unclassified = set()
    for arch in archs:
        for tensor in gguf_pkg.MODEL_TENSORS[gguf_pkg.MODEL_ARCH[arch]]:
            name = gguf_pkg.TENSOR_NAMES[tensor].format(bid=0, xid=0) + ".weight"
            if classify(name)[0] is Role.OTHER:
                unclassified.add(name)
    assert unclassified <= {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight",
                            "blk.0.nextn.eh_proj.weight"}


def test_a_whole_model_named_like_a_shard_is_called_what_it_is(split_model, tmp_path):
    """Issue 11, defect 15: an unsplit file posing as shard 3 "says it is shard 3 of 1"."""
    import shutil

    paths, single = split_model
    for p in paths:
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(single, tmp_path / paths[2].name)
    with pytest.raises(ModelFileError) as caught:
        read_model(tmp_path / paths[0].name)
    assert caught.value.message == (f"{paths[2].name} is not a shard of a split model (it has no split.count), "
                                    "but its name says shard 3 of 3")


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "/dev/null"])
def test_what_exists_but_is_not_a_file_is_not_called_missing(tmp_path, kind):
    """Issue 11, defect 15: a FIFO, a link to /dev/zero and /dev/null were "does not exist"."""
    from cliutil import assert_one_error, invoke

    path = tmp_path / "m.gguf"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/null":
        path = Path("/dev/null")
    else:
        path.symlink_to("/dev/zero")
    expected = {"fifo": "is a named pipe (FIFO), not a regular file",
                "link to /dev/zero": "is a link to /dev/zero, a character device, not a regular file",
                "/dev/null": "is a character device, not a regular file"}[kind]
    assert_one_error(invoke("plan", str(path)), f"{path} {expected}")
    with pytest.raises(ModelFileError, match="not a regular file"):
        read_model(path)
