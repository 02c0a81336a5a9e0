"""A Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub 2.4 and llama.cpp use.

Real HTTP (a threaded `http.server`), so the code under test runs the real huggingface_hub client
and the real moecli downloader against it (`HF_ENDPOINT`). It serves what the Hub serves (read from
huggingface_hub's `hf_api.py` / `file_download.py` / `utils/_http.py` and llama.cpp's
`common/hf-cache.cpp`):

- `GET /api/models/<repo>` and `/api/models/<repo>/revision/<rev>` (`?blobs=true` adds size,
  blobId and `lfs` {sha256, size, pointerSize} to each sibling): `HfApi.model_info`.
- `GET /api/models/<repo>/tree/<rev>[/<path>]?recursive=` (`lfs.oid` is the sha256):
  `HfApi.list_repo_tree`, llama.cpp's `get_repo_files`. Not paginated (the Hub pages at 1000).
- `GET /api/models/<repo>/refs`: branches with `targetCommit` (llama.cpp's `get_repo_commit`).
- `HEAD|GET /<repo>/resolve/<rev>/<path>`: an LFS file answers `302` to a signed CDN URL on
  another origin (`localhost` instead of `127.0.0.1`, as the Hub redirects to its CDN), with
  `X-Repo-Commit`, `X-Linked-Etag` (the sha256), `X-Linked-Size` and the pointer's `ETag`; a
  small non-LFS file (README.md) answers 200 itself, `ETag` = its git blob id. A renamed repo
  (`hub.renamed`) answers `307` with a relative `Location` under its new name.
- `GET|HEAD /cdn/<sha256>?sig=`: the bytes, honouring `Range` (206 / 416).
- Errors as the Hub sends them: `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound
  (404), GatedRepo (401 without a token, 403 with a token that was not granted access), and
  401 "Invalid credentials in Authorization header" for an unknown token.

For tests it counts the file bytes it sends (per file), logs every request (with whether an
Authorization header came along), and injects faults per file: drop the connection after N
bytes, flip one byte at an offset, or stall after N bytes until released. scripts/bench_pull.py
serves a big file with it to time moecli's download against curl.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_CHUNK = 1 << 20
_SECRET = b"moecli-test-cdn"
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid` / `blobId` / `ETag` for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class ServedFile:
    """One file of a repo: bytes in memory, or a file on disk (large files, served with sendfile)."""

    path: str
    data: bytes | None = None
    source: Path | None = None
    lfs: bool = True
    _sha256: str | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.source.stat().st_size

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks(0, self.size):
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    @property
    def pointer(self) -> bytes:
        return _LFS_POINTER.format(sha=self.sha256, size=self.size).encode()

    @property
    def oid(self) -> str:
        """The git blob id: of the LFS pointer for an LFS file, of the content otherwise."""
        return git_blob_id(self.pointer if self.lfs else self.read_all())

    def read_all(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in pieces of at most 1 MiB."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, _CHUNK):
                yield view[pos:min(end, pos + _CHUNK)]
            return
        with open(self.source, "rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                piece = f.read(min(_CHUNK, end - pos))
                if not piece:
                    return
                pos += len(piece)
                yield piece


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, ServedFile]
    gated: bool = False
    refs: tuple[str, ...] = ()  # more branch names besides main, all at the one commit

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path].oid.encode())
        return digest.hexdigest()

    def resolve_revision(self, revision: str) -> str | None:
        commit = self.commit
        if revision in ("main", commit, *self.refs):
            return commit
        return None


@dataclass
class Faults:
    """What goes wrong, per repo path of a file. `drop_after[path]` is a list consumed one entry per
    request that serves bytes of that file; the other two apply to every request while set."""

    drop_after: dict[str, list[int]] = field(default_factory=dict)
    corrupt_at: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)  # answer 200 with the whole file, as some CDNs do
    rate: float | None = None  # bytes/s each response is paced to (a link slower than loopback)
    release: threading.Event = field(default_factory=threading.Event)

    def clear(self) -> None:
        self.drop_after.clear()
        self.corrupt_at.clear()
        self.stall_after.clear()
        self.ignore_range.clear()
        self.release.set()


@dataclass(frozen=True)
class RequestLog:
    method: str
    host: str
    path: str
    range: str | None
    authorized: bool
    status: int


class HubServer:
    """Start with `with HubServer() as hub:` (or start()/stop()); `hub.url` is the HF_ENDPOINT.
    `tls`: a PEM file with a key and its certificate, to serve https as the real Hub does."""

    def __init__(self, tls: Path | None = None) -> None:
        self.tls = tls
        self.repos: dict[str, FakeRepo] = {}
        self.tokens_with_access: set[str] = set()  # tokens granted access to every gated repo
        self.tokens_without_access: set[str] = set()  # valid tokens that never asked for access
        self.faults = Faults()
        self.bytes_sent: Counter[str] = Counter()  # repo path -> file bytes sent (resolve + CDN)
        self.requests: list[RequestLog] = []
        self.renamed: dict[str, str] = {}  # old repo id -> new: its resolve URLs redirect (307, same origin)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path], *, gated: bool = False,
                 refs: tuple[str, ...] = (), lfs_suffixes: tuple[str, ...] = (".gguf", ".bin")) -> FakeRepo:
        served = {}
        for path, content in files.items():
            lfs = path.endswith(lfs_suffixes)
            if isinstance(content, Path):
                served[path] = ServedFile(path, source=content, lfs=lfs)
            else:
                served[path] = ServedFile(path, data=bytes(content), lfs=lfs)
        repo = FakeRepo(repo_id, served, gated=gated, refs=refs)
        self.repos[repo_id] = repo
        return repo

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def cdn_url(self) -> str:
        # Another origin than the Hub endpoint, as the Hub's CDN is: clients must not send the token there.
        return f"{self.scheme}://localhost:{self.port}"

    # -- faults ---------------------------------------------------------------------------------
    def drop(self, path: str, *after: int) -> None:
        """Cut the next len(after) responses for `path` after so many body bytes each."""
        self.faults.drop_after.setdefault(path, []).extend(after)

    def corrupt(self, path: str, offset: int) -> None:
        self.faults.corrupt_at[path] = offset

    def stall(self, path: str, after: int) -> None:
        """Send `after` bytes of `path`, then hold the connection until release() (or 60 s)."""
        self.faults.release.clear()
        self.faults.stall_after[path] = after

    def release(self) -> None:
        self.faults.stall_after.clear()
        self.faults.release.set()

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()

    def sent(self, path: str) -> int:
        with self._lock:
            return self.bytes_sent[path]

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for the handler ----------------------------------------------------------------
    def _log(self, entry: RequestLog) -> None:
        with self._lock:
            self.requests.append(entry)

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path] += n

    def _cdn_link(self, repo: FakeRepo, served: ServedFile) -> str:
        name = f"{repo.repo_id}/{served.path}"
        sig = hmac.new(_SECRET, f"{served.sha256}:{name}".encode(), "sha256").hexdigest()[:32]
        return f"{self.cdn_url}/cdn/{served.sha256}?name={quote(name, safe='')}&sig={sig}"

    def _cdn_file(self, sha: str, query: Mapping[str, list[str]]) -> tuple[FakeRepo, ServedFile] | None:
        name = query.get("name", [""])[0]
        sig = query.get("sig", [""])[0]
        expected = hmac.new(_SECRET, f"{sha}:{name}".encode(), "sha256").hexdigest()[:32]
        if not hmac.compare_digest(sig, expected):
            return None
        org, _, rest = name.partition("/")
        repo_name, _, path = rest.partition("/")
        repo = self.repos.get(f"{org}/{repo_name}")
        served = repo.files.get(path) if repo else None
        if served is None or served.sha256 != sha:
            return None
        return repo, served


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """`bytes=a-b` / `bytes=a-` / `bytes=-n` -> (start, end exclusive); None without a header;
    False when not satisfiable (416). Multi-range requests are served whole (as CDNs may)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        return (max(size - n, 0), size) if n > 0 else False
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return False
    return start, end


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    _status = 0

    def log_message(self, format: str, *args) -> None:  # quiet: tests read hub.requests instead
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    # -- routing --------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        self._status = 0
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        try:
            if path.startswith("/cdn/"):
                self._cdn(path[len("/cdn/"):], query, head)
            elif path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):], query)
            elif "/resolve/" in path:
                self._resolve(path.lstrip("/"), head)
            else:
                self._error(404, None, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.hub._log(RequestLog(self.command, self.headers.get("Host", ""), self.path, self.headers.get("Range"),
                                     self.headers.get("Authorization") is not None, self._status))

    # -- auth -----------------------------------------------------------------------------------
    def _token(self) -> str | None:
        value = self.headers.get("Authorization")
        if value and value.lower().startswith("bearer "):
            return value[7:].strip()
        return None

    def _check_token(self) -> bool:
        """False (and a 401 sent) when a token came that the Hub does not know."""
        token = self._token()
        if token is not None and token not in self.hub.tokens_with_access | self.hub.tokens_without_access:
            self._error(401, None, "Invalid credentials in Authorization header")
            return False
        return True

    def _may_read(self, repo: FakeRepo) -> bool:
        if not repo.gated:
            return True
        token = self._token()
        if token in self.hub.tokens_with_access:
            return True
        if token is None:
            self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access to it "
                                          "and be authenticated to access it. Please log in.")
        else:
            self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the "
                                          "authorized list. Visit the repo page to ask for access.")
        return False

    # -- /api/models ----------------------------------------------------------------------------
    def _api(self, rest: str, query: Mapping[str, list[str]]) -> None:
        if not self._check_token():
            return
        parts = rest.split("/")
        if len(parts) < 2:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo = self.hub.repos.get(f"{parts[0]}/{parts[1]}")
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        tail = parts[2:]
        if not tail:
            return self._model_info(repo, "main", query)
        if tail[0] == "revision" and len(tail) >= 2:
            return self._model_info(repo, "/".join(tail[1:]), query)
        if tail[0] == "refs" and len(tail) == 1:
            branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": repo.commit}
                        for name in ("main", *repo.refs)]
            return self._json({"branches": branches, "tags": [], "converts": []})
        if tail[0] == "tree" and len(tail) >= 2:
            return self._tree(repo, tail[1], "/".join(tail[2:]), query)
        self._error(404, None, "Not Found")

    def _model_info(self, repo: FakeRepo, revision: str, query: Mapping[str, list[str]]) -> None:
        commit = repo.resolve_revision(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path in sorted(repo.files):
            served = repo.files[path]
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=served.size, blobId=served.oid)
                if served.lfs:
                    sibling["lfs"] = {"sha256": served.sha256, "size": served.size, "pointerSize": len(served.pointer)}
            siblings.append(sibling)
        org = repo.repo_id.split("/")[0]
        self._json({
            "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": org,
            "sha": commit, "lastModified": "2026-04-20T12:00:00.000Z", "createdAt": "2026-04-20T12:00:00.000Z",
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": ["gguf"], "library_name": "gguf", "siblings": siblings,
        })

    def _tree(self, repo: FakeRepo, revision: str, folder: str, query: Mapping[str, list[str]]) -> None:
        if repo.resolve_revision(revision) is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                if not recursive and depth > 1:
                    break
                sub = prefix + "/".join(rel[:depth])
                entries.setdefault(sub, {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(),
                                         "size": 0, "path": sub})
            if recursive or len(rel) == 1:
                served = repo.files[path]
                entry = {"type": "file", "oid": served.oid, "size": served.size, "path": path}
                if served.lfs:
                    entry["lfs"] = {"oid": served.sha256, "size": served.size, "pointerSize": len(served.pointer)}
                entries[path] = entry
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        self._json(list(entries.values()))

    # -- /<repo>/resolve/<rev>/<path> -------------------------------------------------------------
    def _resolve(self, rest: str, head: bool) -> None:
        if not self._check_token():
            return
        repo_part, _, tail = rest.partition("/resolve/")
        if repo_part in self.hub.renamed:  # as the Hub answers for a moved repo: a relative redirect
            self.send_response(307)
            self.send_header("Location", f"/{self.hub.renamed[repo_part]}/resolve/{tail}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        repo = self.hub.repos.get(repo_part)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if not self._may_read(repo):
            return
        revision, _, file_path = tail.partition("/")
        commit = repo.resolve_revision(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        served = repo.files.get(file_path)
        if served is None:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist on {revision}",
                               {"X-Repo-Commit": commit})
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if served.lfs:
            self.send_response(302)
            for key, value in {**common, "Location": self.hub._cdn_link(repo, served),
                               "ETag": f'"{served.oid}"', "X-Linked-Etag": f'"{served.sha256}"',
                               "X-Linked-Size": str(served.size), "Content-Length": "0"}.items():
                self.send_header(key, value)
            self.end_headers()
            return
        self._send_file(served, head, {**common, "ETag": f'"{served.oid}"'})

    # -- /cdn/<sha256> ----------------------------------------------------------------------------
    def _cdn(self, sha: str, query: Mapping[str, list[str]], head: bool) -> None:
        found = self.hub._cdn_file(sha, query)
        if found is None:
            return self._error(403, None, "Request signature does not match")
        _, served = found
        self._send_file(served, head, {"ETag": f'"{served.sha256}"', "Accept-Ranges": "bytes"})

    def _send_file(self, served: ServedFile, head: bool, headers: Mapping[str, str]) -> None:
        size = served.size
        wanted = None if served.path in self.hub.faults.ignore_range else parse_range(self.headers.get("Range"), size)
        if wanted is False:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = wanted if wanted else (0, size)
        self.send_response(206 if wanted else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not head:
            self._send_body(served, start, end)

    def _send_body(self, served: ServedFile, start: int, end: int) -> None:
        faults = self.hub.faults
        drops = faults.drop_after.get(served.path)
        limit = drops.pop(0) if drops else None
        stall = faults.stall_after.get(served.path)
        corrupt = faults.corrupt_at.get(served.path)
        if limit is None and stall is None and corrupt is None and served.source is not None:
            self.wfile.flush()
            with open(served.source, "rb") as f:
                if faults.rate is None:
                    sent = self.connection.sendfile(f, start, end - start)
                else:
                    sent = self._paced_sendfile(f, start, end, faults.rate)
            self.hub._count(served.path, sent)
            return
        budget = end - start
        if limit is not None:
            budget = min(budget, limit)
        if stall is not None:
            budget = min(budget, stall)
        pos = start
        for chunk in served.chunks(start, start + budget):
            if corrupt is not None and pos <= corrupt < pos + len(chunk):
                chunk = bytearray(chunk)
                chunk[corrupt - pos] ^= 0xFF
            self.wfile.write(chunk)
            self.hub._count(served.path, len(chunk))
            pos += len(chunk)
        if pos < end:  # a fault cut this response short
            self.wfile.flush()
            if stall is not None and (limit is None or stall <= limit):
                faults.release.wait(timeout=60)
            self._drop()

    def _paced_sendfile(self, f, start: int, end: int, rate: float) -> int:
        """sendfile in 1 MiB steps, never ahead of `rate` bytes/s since the first byte."""
        began, pos = time.monotonic(), start
        while pos < end:
            pos += self.connection.sendfile(f, pos, min(1 << 20, end - pos))
            ahead = (pos - start) / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
        return pos - start

    def _drop(self) -> None:
        """Close the connection mid-body: the client sees fewer bytes than Content-Length."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- plumbing -------------------------------------------------------------------------------
    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, extra: Mapping[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# -- a repo of GGUF files like the ones on the Hub ------------------------------------------------
TINY_REPO = "tiny-org/Tiny-MoE-GGUF"
GATED_REPO = "tiny-org/Gated-MoE-GGUF"
# A self-signed key and certificate for localhost and 127.0.0.1, for tests only (valid to 2126):
# openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=localhost \
#     -addext subjectAltName=DNS:localhost,IP:127.0.0.1, key and certificate in one file.
LOCALHOST_TLS = Path(__file__).resolve().parent / "data" / "localhost-tls.pem"
SHARDS = tuple(f"Tiny-MoE-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3))


def tiny_moe(ggml_type: str, *, n_layer: int = 3):
    """A small qwen3moe (8 experts, top 2, hidden 256) with real tensor names: (arch, metadata, specs)."""
    from moecli.synth import TensorSpec

    e, ff, n_exp, vocab = 256, 256, 8, 512
    q = ggml_type
    specs = [TensorSpec("token_embd.weight", (e, vocab), q), TensorSpec("output_norm.weight", (e,), "F32"),
             TensorSpec("output.weight", (e, vocab), q)]
    for i in range(n_layer):
        b = f"blk.{i}"
        specs += [TensorSpec(f"{b}.attn_norm.weight", (e,), "F32"), TensorSpec(f"{b}.attn_q.weight", (e, 256), q),
                  TensorSpec(f"{b}.attn_k.weight", (e, 64), q), TensorSpec(f"{b}.attn_v.weight", (e, 64), q),
                  TensorSpec(f"{b}.attn_output.weight", (256, e), q),
                  TensorSpec(f"{b}.attn_q_norm.weight", (64,), "F32"), TensorSpec(f"{b}.attn_k_norm.weight", (64,), "F32"),
                  TensorSpec(f"{b}.ffn_norm.weight", (e,), "F32"), TensorSpec(f"{b}.ffn_gate_inp.weight", (e, n_exp), "F32"),
                  TensorSpec(f"{b}.ffn_gate_exps.weight", (e, ff, n_exp), q),
                  TensorSpec(f"{b}.ffn_up_exps.weight", (e, ff, n_exp), q),
                  TensorSpec(f"{b}.ffn_down_exps.weight", (ff, e, n_exp), q)]
    a = "qwen3moe"
    metadata = {"general.name": "Tiny-MoE", f"{a}.block_count": n_layer, f"{a}.context_length": 4096,
                f"{a}.embedding_length": e, f"{a}.feed_forward_length": 512, f"{a}.attention.head_count": 4,
                f"{a}.attention.head_count_kv": 1, f"{a}.attention.key_length": 64, f"{a}.attention.value_length": 64,
                f"{a}.rope.freq_base": 1e6, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
                f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 2, f"{a}.expert_feed_forward_length": ff}
    return a, metadata, specs


def write_tiny_repo(directory: Path) -> dict[str, Path]:
    """The files of TINY_REPO: the model under test (Q4_K_M split in 3 shards, ~3 MB) and what a
    real GGUF repo holds besides: a larger single-file Q8_0, a smaller Q4_0, a sub-folder quant
    split in 2 (UD-Q4_K_XL), a vision projector and a README."""
    from moecli.synth import write_gguf, write_split_gguf

    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    arch, meta, q4k = tiny_moe("Q4_K")
    for path in write_split_gguf(directory / "Tiny-MoE-Q4_K_M", arch, meta, q4k, 3, seed=1):
        files[path.name] = path
    _, _, q8 = tiny_moe("Q8_0")
    files["Tiny-MoE-Q8_0.gguf"] = write_gguf(directory / "Tiny-MoE-Q8_0.gguf", arch, meta, q8, seed=2)
    _, _, q40 = tiny_moe("Q4_0", n_layer=2)
    files["Tiny-MoE-Q4_0.gguf"] = write_gguf(directory / "Tiny-MoE-Q4_0.gguf", arch, {**meta, f"{arch}.block_count": 2},
                                             q40, seed=3)
    (directory / "UD-Q4_K_XL").mkdir(exist_ok=True)
    for path in write_split_gguf(directory / "UD-Q4_K_XL" / "Tiny-MoE-UD-Q4_K_XL", arch, meta, q4k, 2, seed=4):
        files[f"UD-Q4_K_XL/{path.name}"] = path
    from moecli.synth import TensorSpec

    files["mmproj-Tiny-MoE-F16.gguf"] = write_gguf(directory / "mmproj-Tiny-MoE-F16.gguf", "clip", {},
                                                   [TensorSpec("v.patch_embd.weight", (64, 64), "F16")], seed=5)
    readme = directory / "README.md"
    readme.write_text("# Tiny-MoE-GGUF\n\nA test repo.\n")
    files["README.md"] = readme
    return files


# -- pytest fixtures (imported by test_hub.py, test_download.py and test_store.py) ----------------
import pytest  # noqa: E402 - only the fixtures below need it

GRANTED_TOKEN = "hf_granted_test_token"
NOT_GRANTED_TOKEN = "hf_valid_but_not_granted"


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_repo(tmp_path_factory.mktemp("tiny-repo"))


@pytest.fixture(scope="session")
def hub_server(tiny_files):
    with HubServer() as server:
        server.add_repo(TINY_REPO, tiny_files, refs=("v1.0",))
        server.add_repo(GATED_REPO, {"Gated-MoE-Q4_0.gguf": tiny_files["Tiny-MoE-Q4_0.gguf"]}, gated=True)
        server.tokens_with_access.add(GRANTED_TOKEN)
        server.tokens_without_access.add(NOT_GRANTED_TOKEN)
        yield server


@pytest.fixture
def hub(hub_server, monkeypatch) -> HubServer:
    """The session's hub, with no faults and zeroed counters, as this test's HF_ENDPOINT."""
    hub_server.release()
    hub_server.faults.clear()
    hub_server.reset_counters()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    yield hub_server
    hub_server.release()
    hub_server.faults.clear()
    hub_server.renamed.clear()
