"""The byte transfer of one file: resumable across processes, hashed while it is written.

huggingface_hub's downloader resumes only within one process: each run writes a process-unique
temporary file and deletes it on failure (huggingface/huggingface_hub#4196, PR #4228), so after
Ctrl-C, a crash or a reboot a 20 GB file starts again from zero. Here the bytes go into a
persistent partial file that a later run continues with an HTTP `Range` request, through
huggingface_hub's own HTTP client (`get_session()`: proxies, the Hub's headers, redirects; httpx2
drops the Authorization header when the Hub redirects to its CDN, another origin).

The digest is computed as the bytes arrive (no second read of a finished file). The one read from
disk is the prefix of a partial file left by an earlier run: a hash state cannot be carried across
processes, so that prefix is hashed again before the transfer continues.

Throughput against curl from a local server: `python tests/hubserver.py` (a benchmark, not a test).
"""

from __future__ import annotations

import errno
import hashlib
import queue
import threading
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import get_session
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import hf_raise_for_status

from moecli.errors import DiskSpaceError, DownloadError
from moecli.units import MiB, fmt_bytes

# llama.cpp's downloader (common/download.cpp) keeps its partial file as `<blob>.downloadInProgress`
# and resumes it with Range requests too; sharing the name lets either tool finish the other's work.
PARTIAL_SUFFIX = ".downloadInProgress"

_RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # huggingface_hub's _DEFAULT_RETRY_ON_STATUS_CODES
_DEFAULT_TIMEOUT = 10.0  # huggingface_hub's DEFAULT_DOWNLOAD_TIMEOUT; HF_HUB_DOWNLOAD_TIMEOUT overrides it


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
    retries: int = 5  # attempts in a row that bring no new byte before giving up
    backoff: float = 1.0  # seconds before the first retry, doubled each time, at most 8
    timeout: float | None = None  # seconds without a byte; None: HF_HUB_DOWNLOAD_TIMEOUT or 10
    read_bytes: int = 1 * MiB  # bytes asked of the socket per read (see _widen_socket_reads)


def _widen_socket_reads(read_bytes: int) -> None:
    """httpcore2 asks the socket for 64 KiB per read (HTTP11Connection.READ_NUM_BYTES): ~16k trips
    per GiB through h11 and four generator layers. 1 MiB reads made a whole fetch from localhost
    (with its sha256) 30 % faster on the 2-core dev machine (317 -> 409 MiB/s median of 5; 4 MiB:
    305). A larger read is harmless for small responses: recv returns what is there."""
    try:
        from httpcore2._sync.http11 import HTTP11Connection
    except ImportError:  # a different transport: leave it alone
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", 0) < read_bytes:
        HTTP11Connection.READ_NUM_BYTES = read_bytes


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


def _content_range_start(response: httpx2.Response, size: int) -> int:
    """Where a 206 response starts, checking it is a range of a file of `size` bytes."""
    value = response.headers.get("Content-Range", "")
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
    """
    _widen_socket_reads(options.read_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _Partial(path, digest, size)
    if partial.have > size:  # not a prefix of this file: it cannot be resumed
        partial.restart()
    if partial.have:
        hash_prefix(path, partial.hasher, on_rehash)

    timeout = httpx2.Timeout(read_timeout(options))
    failures = 0
    while partial.have < size:
        before = partial.have
        try:
            _transfer(url, partial, headers, timeout, options, on_bytes, on_restart)
        except (httpx2.TransportError, _RetryableStatus) as exc:
            failures = 0 if partial.have > before else failures + 1
            if failures > options.retries:
                reason = (str(exc) or type(exc).__name__).splitlines()[0]
                raise DownloadError(f"download of {label} stopped at {fmt_bytes(partial.have)} of {fmt_bytes(size)}: "
                                    f"{reason}", "pull again: it resumes from where it stopped") from exc
            sleep(min(options.backoff * 2 ** max(failures - 1, 0), 8.0))
        except (HfHubHTTPError, OfflineModeIsEnabled):
            raise  # OSError subclasses, but about the Hub: the caller maps them
        except OSError as exc:
            raise _disk_error(exc, path, label) from exc

    got = partial.hasher.hexdigest()
    if got != digest.value:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{label} failed verification: its {digest.kind} is {got[:16]}…, "
                            f"the Hub says {digest.value[:16]}…",
                            "the bytes were corrupted on the way; pull again to download the file afresh")


class _RetryableStatus(Exception):
    """A 408/429/5xx answer: worth another try."""


def _transfer(url: str, partial: _Partial, headers: Mapping[str, str], timeout: httpx2.Timeout,
              options: TransferOptions, on_bytes: Callable[[int], None],
              on_restart: Callable[[int], None] | None) -> None:
    """One ranged GET from the end of the partial file, appending what arrives."""
    request_headers = {**headers, "Accept-Encoding": "identity", "Range": f"bytes={partial.have}-"}
    with get_session().stream("GET", url, headers=request_headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code in _RETRY_STATUS:
            raise _RetryableStatus(f"the server answered {response.status_code}")
        if response.status_code == 416:  # the server does not agree our partial file is a prefix
            dropped = partial.restart()
            if on_restart:
                on_restart(dropped)
            return
        if response.status_code >= 400:
            response.read()  # hf_raise_for_status reads the body of the error
            hf_raise_for_status(response)
        if response.status_code == 200 and partial.have:  # the server ignored the range: start again
            dropped = partial.restart()
            if on_restart:
                on_restart(dropped)
        elif response.status_code == 206 and _content_range_start(response, partial.size) != partial.have:
            raise DownloadError(f"the server sent a range that does not start at byte {partial.have}",
                                "pull again; if it persists, the mirror does not honour Range requests")

        # Each chunk is appended and hashed as it arrives: what a broken connection, Ctrl-C or a
        # kill leaves is a valid prefix, and the next attempt (or the next run) continues after it.
        # The hash runs on a second thread (1 GiB from a local server on the quiet 2-core dev
        # machine, median of 5: 626 MiB/s, against 422 MiB/s hashing inline; curl alone: 868).
        with open(partial.path, "ab", buffering=0) as out, _Hasher(partial.hasher) as hasher:
            for chunk in response.iter_raw():
                if not chunk:
                    continue
                if partial.have + len(chunk) > partial.size:
                    raise DownloadError(f"the server sent more than the {partial.size} bytes the Hub lists",
                                        "pull again; if it persists, the repo changed while pulling")
                _write_all(out, chunk)
                hasher.update(chunk)
                partial.have += len(chunk)
                on_bytes(len(chunk))


class _Hasher:
    """Hashes on a second thread while the next chunk arrives: hashlib releases the GIL, so on two
    free cores a transfer costs max(receive, hash) instead of their sum. `__exit__` waits until
    every chunk given is hashed, so the hash always matches the bytes written."""

    def __init__(self, hasher) -> None:
        self._hasher = hasher
        self._queue: queue.Queue = queue.Queue(maxsize=8)
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

    def __enter__(self) -> _Hasher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _write_all(out, chunk: bytes) -> None:
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
