"""The byte transfer of one file: resumable across processes, hashed while it is written.

huggingface_hub's downloader resumes only within one process: each run writes a process-unique
temporary file and deletes it on failure (huggingface/huggingface_hub#4196, PR #4228), so after
Ctrl-C, a crash or a reboot a 20 GB file starts again from zero. Here the bytes go into a
persistent partial file that a later run continues with an HTTP `Range` request.

huggingface_hub lists, authenticates and lays out the cache; the body itself is read with the
standard library (`urllib.request` -> `http.client`), where a read is one `recv` straight from the
socket (or, over TLS, one chunk assembled in C), while huggingface_hub's httpx2 copies every chunk
three times inside h11. On the 2-core dev machine that was the difference between 0.71x and 1.11x
curl's throughput from a local server (`python scripts/bench_pull.py`, a benchmark, not a test, with
`--tls`, `--rate-mib` and `--gguf FILE` to time a whole `moecli pull`). What the Hub's own client
would do is kept: proxies from the environment, its TLS trust store, its headers, redirects
followed with the token sent only to the origin that was asked (the Hub's CDN is another origin),
its error classes for an error answer, and HF_HUB_OFFLINE.

The digest is computed as the bytes arrive, on a second thread (no second read of a finished file).
The one read from disk is the prefix of a partial file left by an earlier run: a hash state cannot
be carried across processes, so that prefix is hashed again before the transfer continues.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from moecli.errors import DiskSpaceError, DownloadError
from moecli.hub.errors import raise_for_status, transport_reason, untrusted_certificate
from moecli.units import MiB, fmt_bytes

_RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # huggingface_hub's _DEFAULT_RETRY_ON_STATUS_CODES (utils/_http.py)
_DEFAULT_TIMEOUT = 10.0  # huggingface_hub's DEFAULT_DOWNLOAD_TIMEOUT (constants.py); HF_HUB_DOWNLOAD_TIMEOUT overrides it


@dataclass(frozen=True)
class Digest:
    """What a file must hash to: the LFS sha256, or the git blob id (sha1 of `blob <size>\\0` +
    content) for a file stored in git itself."""

    kind: str  # "sha256" | "git-sha1"
    value: str

    def new(self, size: int):
        if self.kind == "sha256":
            return hashlib.sha256()
        if self.kind == "git-sha1":
            hasher = hashlib.sha1()
            hasher.update(b"blob %d\0" % size)
            return hasher
        raise ValueError(f"unknown digest kind {self.kind!r}")


@dataclass(frozen=True)
class TransferOptions:
    # huggingface_hub's http_backoff (utils/_http.py): 5 retries, waits from 1 s doubling to at most 8 s
    retries: int = 5  # attempts in a row that bring no new byte before giving up
    backoff: float = 1.0  # seconds before the first retry, doubled each time, at most 8
    timeout: float | None = None  # seconds without a byte; None: HF_HUB_DOWNLOAD_TIMEOUT or 10
    # Bytes per read: each chunk is received, written and hashed while it is still in cache. 1 GiB
    # from a local server on the 2-core dev machine (1 MiB L2 per core), medians of 5 against curl
    # (`python scripts/bench_pull.py --runs 5 --chunk-kib N`): 64 KiB 0.71x (Python's cost per read),
    # 256 KiB 1.02x, 1 MiB 0.92x (each chunk read back from memory).
    chunk_bytes: int = 256 * 1024
    chunks_in_flight: int = 16  # written, waiting for the hash thread: 4 MiB, within the shared L3


def read_timeout(options: TransferOptions) -> float:
    if options.timeout is not None:
        return options.timeout
    value = os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT")
    try:
        return float(value) if value else _DEFAULT_TIMEOUT
    except ValueError:
        return _DEFAULT_TIMEOUT


def hash_prefix(path: Path, hasher, on_bytes: Callable[[int], None] | None = None) -> int:
    """Feed the bytes already in `path` to `hasher`; returns how many there were."""
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            hasher.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return done


def hash_file(path: Path, digest: Digest, size: int, on_bytes: Callable[[int], None] | None = None) -> str:
    hasher = digest.new(size)
    hash_prefix(path, hasher, on_bytes)
    return hasher.hexdigest()


def _content_range_start(headers, size: int) -> int:
    """Where a 206 response starts, checking it is a range of a file of `size` bytes."""
    value = headers.get("Content-Range", "")
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.split("-")[0])
        if unit != "bytes" or (total != "*" and int(total) != size):
            raise ValueError
    except ValueError:
        raise DownloadError(f"the server answered a range request with Content-Range {value!r} "
                            f"for a file of {size} bytes", "pull again; if it persists, the mirror is not Hub-compatible") from None
    return start


class _Partial:
    """The partial file and the hash of the bytes it holds, kept in step."""

    def __init__(self, path: Path, digest: Digest, size: int) -> None:
        self.path, self.digest, self.size = path, digest, size
        self.have = path.stat().st_size if path.exists() else 0
        self.hasher = digest.new(size)

    def restart(self) -> int:
        """Throw the bytes away (they cannot be resumed); returns how many there were."""
        dropped, self.have = self.have, 0
        self.path.unlink(missing_ok=True)
        self.hasher = self.digest.new(self.size)
        return dropped


def fetch(url: str, path: Path, *, label: str, size: int, digest: Digest, headers: Mapping[str, str],
          on_bytes: Callable[[int], None], on_restart: Callable[[int], None] | None = None,
          on_rehash: Callable[[int], None] | None = None, options: TransferOptions = TransferOptions(),
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Bring the partial file `path` to the `size` bytes of `url` and check they hash to `digest`.

    Resumes from the bytes `path` already holds. `on_rehash(n)` reports bytes of that prefix as
    they are hashed again, `on_bytes(n)` bytes as they arrive, `on_restart(n)` bytes thrown away
    (a server that ignored the range). On return the partial file is complete and verified.
    Raises DownloadError: the partial file is kept when its bytes may be good (a dropped
    connection), removed when they are not (a digest mismatch); either way nothing looks complete.
    An error answer from the Hub raises huggingface_hub's own error (HfHubHTTPError and kin), which
    moecli.hub.errors translates.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():  # what huggingface_hub's own client would refuse
        raise OfflineModeIsEnabled(f"Cannot reach {url}: offline mode is enabled (HF_HUB_OFFLINE).")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _Partial(path, digest, size)
    if partial.have > size:  # not a prefix of this file: it cannot be resumed
        partial.restart()
    if partial.have:
        hash_prefix(path, partial.hasher, on_rehash)

    failures = 0
    while partial.have < size:
        before = partial.have
        try:
            _transfer(url, partial, headers, read_timeout(options), options, on_bytes, on_restart)
        except _Retryable as exc:
            failures = 0 if partial.have > before else failures + 1
            if failures > options.retries:
                raise DownloadError(f"download of {label} stopped at {fmt_bytes(partial.have)} of {fmt_bytes(size)}: "
                                    f"{exc}", "pull again: it resumes from where it stopped") from exc
            sleep(min(options.backoff * 2 ** max(failures - 1, 0), 8.0))
        except HfHubHTTPError:
            raise  # an OSError subclass, but about the Hub: the caller maps it
        except OSError as exc:  # the network's errors are _Retryable by now: this is the disk
            raise _disk_error(exc, path, label) from exc

    got = partial.hasher.hexdigest()
    if got != digest.value:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{label} failed verification: its {digest.kind} is {got[:16]}…, "
                            f"the Hub says {digest.value[:16]}…",
                            "the bytes were corrupted on the way; pull again to download the file afresh")


class _Retryable(Exception):
    """A dropped, refused or stalled connection, or a 408/429/5xx answer: worth another try."""


def _transfer(url: str, partial: _Partial, headers: Mapping[str, str], timeout: float,
              options: TransferOptions, on_bytes: Callable[[int], None],
              on_restart: Callable[[int], None] | None) -> None:
    """One ranged GET from the end of the partial file, appending what arrives."""
    try:
        response = _open(url, {**headers, "Accept-Encoding": "identity", "Range": f"bytes={partial.have}-"}, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in _RETRY_STATUS:
            raise _Retryable(f"the server answered {exc.code}") from exc
        if exc.code == 416:  # the server does not agree our partial file is a prefix
            dropped = partial.restart()
            if on_restart:
                on_restart(dropped)
            return
        raise_for_status(exc)  # huggingface_hub's error class for it: the caller translates it
        raise DownloadError(f"the server answered {exc.code} for {exc.url}", "pull again later") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        cause = getattr(exc, "reason", exc)
        if isinstance(cause, ssl.SSLCertVerificationError):  # trying again will not help
            raise untrusted_certificate(url, cause) from exc
        raise _Retryable(transport_reason(exc)) from exc

    with response:
        if response.status == 206:
            if _content_range_start(response.headers, partial.size) != partial.have:
                raise DownloadError(f"the server sent a range that does not start at byte {partial.have}",
                                    "pull again; if it persists, the mirror does not honour Range requests")
        elif partial.have:  # a 200: the server ignored the range, start again
            dropped = partial.restart()
            if on_restart:
                on_restart(dropped)
        if response.length is not None and partial.have + response.length != partial.size:
            raise DownloadError(f"the server sends {partial.have + response.length} bytes of a file the Hub lists "
                                f"at {partial.size}", "pull again; if it persists, the repo changed while pulling")

        # Over plain TCP read1 is one recv of what the socket holds. Over TLS it returns one record
        # (at most 16 KiB, RFC 8446 5.1): too many trips through Python, so read() assembles the chunk
        # in C. Each is the faster of the two where it is used (1 GiB from a local server, the two
        # swapped on this line, `scripts/bench_pull.py --runs 5` and `--tls --runs 3`: plain 867
        # against 684 MiB/s, TLS 284 against 105; curl 950 and 415). A stall or a kill loses at most
        # the chunk being read: its bytes are fetched again.
        read = response.read if urlsplit(response.url).scheme == "https" else response.read1
        # Each chunk is appended and hashed as it arrives: what a broken connection, Ctrl-C or a
        # kill leaves is a valid prefix, and the next attempt (or the next run) continues after it.
        with open(partial.path, "ab", buffering=0) as out, _HashThread(partial.hasher, options) as hashing:
            while partial.have < partial.size:
                try:
                    chunk = read(min(options.chunk_bytes, partial.size - partial.have))
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(transport_reason(exc)) from exc
                if not chunk:
                    raise _Retryable("the server closed the connection early")
                _write_all(out, chunk)
                hashing.update(chunk)
                partial.have += len(chunk)
                on_bytes(len(chunk))


def _open(url: str, headers: Mapping[str, str], timeout: float) -> http.client.HTTPResponse:
    """GET `url`, following redirects, with the Hub's token only where it was meant to go."""
    request = urllib.request.Request(url)
    for name, value in headers.items():
        if name.lower() == "authorization":  # not copied to a redirect; _SameOriginAuth decides
            request.add_unredirected_header(name, value)
        else:
            request.add_header(name, value)
    return _opener().open(request, timeout=timeout)


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Carry the token across a redirect within the same origin (a renamed repo), never to
    another one (the Hub's CDN, whose signed URLs must not get it): httpx's rule, and the Hub's."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        token = req.unredirected_hdrs.get("Authorization")
        if new is not None and token and _origin(newurl) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", token)
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _opener() -> urllib.request.OpenerDirector:
    """Proxies from the environment as it is now (HTTPS_PROXY, NO_PROXY...), httpx's trust store."""
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=_tls_context()), _SameOriginAuth)


@cache
def _tls_context():
    """The context huggingface_hub's httpx2 verifies the Hub with (SSL_CERT_FILE, the system's
    store); loading it takes ~50 ms, so once per process."""
    try:
        from httpcore2 import default_ssl_context
        return default_ssl_context()
    except ImportError:
        return ssl.create_default_context()


class _HashThread:
    """Hashes on a second thread while the next chunk arrives: hashlib releases the GIL, so on two
    free cores a transfer costs max(receive, hash) instead of their sum. The queue is short, so
    the receiver waits when the hash falls behind and the chunks are hashed while still in cache.
    `__exit__` waits until every chunk given is hashed, so the hash always matches the bytes written."""

    def __init__(self, hasher, options: TransferOptions) -> None:
        self._hasher = hasher
        self._queue: queue.Queue = queue.Queue(maxsize=options.chunks_in_flight)
        self._thread = threading.Thread(target=self._run, name="moecli-sha256", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._hasher.update(chunk)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self._error = exc

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> _HashThread:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _write_all(out, chunk) -> None:
    """An unbuffered write may take less than all of it (a signal, a full disk): go on."""
    view = memoryview(chunk)
    while view:
        view = view[out.write(view):]


def _disk_error(exc: OSError, path: Path, label: str) -> Exception:
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"the disk filled up while writing {label} to {path.parent}",
                              "free some space and pull again: it resumes from where it stopped")
    return DownloadError(f"cannot write {label} to {path}: {exc.strerror or exc}",
                         "check the permissions of the Hugging Face cache (HF_HUB_CACHE / HF_HOME)")
