"""Verified GGUF files in the Hugging Face cache, from a chosen candidate or from what the user typed.

    download(candidate, on_progress=...) -> Pulled        resumable transfer, sha256, GGUF header
    pull(ref, fits=..., on_choice=..., on_progress=...)   list, choose, download: all of it

huggingface_hub does what it is good at: the Hub's API (listing with sizes and LFS sha256, gated
repos, revisions, errors), authentication (HF_TOKEN), the endpoint (HF_ENDPOINT) and the cache
layout (HF_HOME / HF_HUB_CACHE: blobs/ + snapshots/ symlinks + refs/, the layout `llama-server -hf`
reads too). The byte transfer is moecli.hub.transfer's, because huggingface_hub cannot resume
across processes (huggingface/huggingface_hub#4196) and does not check the sha256 of a plain HTTP
download.

Nothing here prints: progress goes to callbacks, failures are MoecliError subclasses. Nothing here
writes moecli's own records either: `on_created` tells the caller of each file before it is made,
and `Pulled` says what was verified and created (moecli.models.pull_and_record keeps the store).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_url
from huggingface_hub.utils import WeakFileLock

from moecli.errors import DiskSpaceError, DownloadError, ModelFileError
from moecli.hub import cache
from moecli.hub.env import HubEnv, quiet_hub
from moecli.hub.errors import RepoRequest, gated_without_token, translated
from moecli.hub.listing import Candidate, Choice, Fits, HubFile, choose, list_repo
from moecli.hub.refs import ModelRef
from moecli.hub.transfer import Digest, TransferOptions, fetch, hash_file
from moecli.units import fmt_bytes


@dataclass(frozen=True)
class Progress:
    """One snapshot of a pull, for the whole model (all shards together)."""

    name: str  # org/repo:TAG
    stage: str  # "check": hashing bytes already on disk; "download"; "done"
    file: str  # the repo path being worked on
    file_index: int  # 1-based
    n_files: int
    done: int  # bytes of the model on disk and checked, or arriving
    total: int
    downloaded: int  # bytes transferred by this run
    speed: float  # bytes/s over the last few seconds of transfer
    eta: float | None  # seconds to go at that speed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class _Meter:
    """Turns byte counts into Progress callbacks, at most 10 a second (and at every stage change)."""

    WINDOW = 5.0  # seconds of transfer the speed is averaged over

    def __init__(self, candidate: Candidate, callback: Callable[[Progress], None] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.candidate, self.callback, self.clock = candidate, callback, clock
        self.done = self.downloaded = 0
        self.transfer_seconds = 0.0  # wall time in fetch(): what the download speed is measured over
        self.stage, self.file, self.index = "check", candidate.files[0].path, 1
        self.samples: deque[tuple[float, int]] = deque()
        self.last_emit = 0.0

    def at(self, stage: str, index: int) -> None:
        self.stage, self.index, self.file = stage, index, self.candidate.files[index - 1].path
        self.emit(force=True)

    def add(self, n: int, transferred: bool) -> None:
        self.done += n
        if transferred:
            self.downloaded += n
            now = self.clock()
            self.samples.append((now, self.downloaded))
            while self.samples and now - self.samples[0][0] > self.WINDOW:
                self.samples.popleft()
        self.emit()

    def speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def emit(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = self.clock()
        if not force and now - self.last_emit < 0.1:
            return
        self.last_emit = now
        speed = self.speed()
        left = self.candidate.size - self.done
        eta = left / speed if speed > 0 and self.stage == "download" else None
        self.callback(Progress(self.candidate.name, self.stage, self.file, self.index, len(self.candidate.files),
                               self.done, self.candidate.size, self.downloaded, speed, eta))


@dataclass(frozen=True)
class CachedFile:
    """One verified file of a pulled model in the Hugging Face cache."""

    repo_path: str  # the file's path in the repo
    size: int
    digest: str  # the LFS sha256 (or the git blob id of a small non-LFS file)
    path: Path  # the snapshot path: what llama.cpp, huggingface_hub and moecli open
    blob: Path  # the bytes in the cache's blobs/
    verified_mtime_ns: int  # the blob's mtime when its digest was checked
    hashed: bool = True  # this run read every byte and checked the digest (False: trusted, see Verified)


@dataclass(frozen=True)
class Pulled:
    candidate: Candidate
    files: tuple[CachedFile, ...]  # first shard first
    downloaded: int  # bytes transferred by this run
    reused: int  # bytes that were on disk already
    created: tuple[Path, ...] = ()  # the blobs and snapshot links this run made (they were not there before)
    seconds: float = 0.0  # wall time of the transfers (with the hash of any resumed prefix)
    # refs/<revision> moved from `old_commit` to this commit: the files of the old snapshot that the
    # new commit has unchanged were linked into the new one (`carried`: old path, new path), the
    # others (`changed`: repo path, old path) are not at the new commit as they were
    old_commit: str | None = None
    carried: tuple[tuple[Path, Path], ...] = ()
    changed: tuple[tuple[str, Path], ...] = ()

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def paths(self) -> tuple[Path, ...]:
        """The snapshot paths, first shard first."""
        return tuple(f.path for f in self.files)


Created = Callable[[Candidate, Path], None]  # told of each file before it is made in the cache
Carried = Callable[[Candidate, Path, Path], None]  # (old snapshot path, new one): told before the new link is made
Verified = Callable[[Candidate], Mapping[tuple[Path, str], int]]  # (blob, digest) -> mtime when last verified


def check_gguf(paths_: Sequence[Path]) -> None:
    """Each file is a GGUF whose header parses, whose tensor data fits in the file, and whose
    split.no / split.count say it is the shard its name says (llama.cpp's gguf-split counts
    split.no from 0). Whether moecli knows the architecture is for plan/run to say, not pull."""
    from moecli.gguf import read_header

    for i, path in enumerate(paths_):
        header = read_header(path)  # ModelFileError: not a GGUF, truncated or corrupt header
        if header.file_size is not None and header.file_size < header.expected_size:
            raise ModelFileError(f"{path.name} holds {header.file_size} bytes, its header declares "
                                 f"{header.expected_size}", "the repo's file is damaged; tell the repo's owner")
        if len(paths_) > 1:
            no, count = header.metadata.get("split.no"), header.metadata.get("split.count")
            if no != i or count != len(paths_):
                raise ModelFileError(f"{path.name} says it is shard {no} of {count} (from 0), its name says "
                                     f"{i} of {len(paths_)}", "the repo's shards do not belong together")


@dataclass(frozen=True)
class _Placed:
    created_blob: bool  # this run downloaded the blob
    created_link: bool  # this run made the snapshot link
    verified_mtime_ns: int
    hashed: bool = True


def _verify_present(path: Path, f: HubFile, digest: Digest, meter: _Meter, known_mtime: int | None) -> tuple[int, bool]:
    """Check a file that is already in the cache; returns its mtime and whether it was hashed.
    Hashing is skipped when moecli verified this very blob before and its size and mtime are
    unchanged since (`known_mtime`; None: hash it); the caller says so ("verified on DATE"),
    never "verified" alone. Otherwise the bytes are read: they never passed through moecli's hash."""
    stat = path.stat()
    if stat.st_size == f.size and known_mtime is not None and known_mtime == stat.st_mtime_ns:
        meter.add(f.size, transferred=False)
        return stat.st_mtime_ns, False
    got = hash_file(path, digest, f.size, lambda n: meter.add(n, transferred=False)) \
        if stat.st_size == f.size else None
    if got != digest.value:
        raise DownloadError(f"{f.path} is already in the Hugging Face cache but does not match the Hub's "
                            f"{digest.kind} ({path})",
                            f"moecli never deletes what it finds in the cache: delete {path}, then pull again")
    return stat.st_mtime_ns, True


def _ensure_file(candidate: Candidate, index: int, f: HubFile, blob: Path, pointer: Path, meter: _Meter,
                 headers: Mapping[str, str], options: TransferOptions, known_good: Mapping[tuple[Path, str], int],
                 env: HubEnv, creating: Callable[[Path], None]) -> _Placed:
    digest = f.digest
    known = known_good.get((blob, digest.value))
    if pointer.exists():  # a snapshot file, ours or huggingface_hub's or llama.cpp's: reuse it
        meter.at("check", index)
        return _Placed(False, False, *_verify_present(pointer.resolve(), f, digest, meter, known))
    created_blob, hashed = False, True
    if blob.exists():
        meter.at("check", index)
        mtime, hashed = _verify_present(blob, f, digest, meter, known)
    else:
        meter.at("download", index)
        partial = cache.partial_of(blob)
        if not partial.exists():  # a new partial file: said before its first byte is written
            creating(partial)
        url = hf_hub_url(candidate.repo, f.path, revision=candidate.commit, endpoint=candidate.endpoint)
        began = time.monotonic()
        with translated(RepoRequest(env, candidate.repo, candidate.revision, f.path)):
            fetch(url, partial, label=f.path, size=f.size, digest=digest, headers=headers,
                  on_bytes=lambda n: meter.add(n, transferred=True),
                  on_rehash=lambda n: meter.add(n, transferred=False),
                  on_restart=lambda n: meter.add(-n, transferred=False), options=options)
        meter.transfer_seconds += time.monotonic() - began
        if blob.exists():  # placed meanwhile by a tool that takes no lock: keep that one
            partial.unlink()
        else:
            creating(blob)  # before it exists: a pull that stops later has still told who made it
            os.replace(partial, blob)
            created_blob = True
        mtime = blob.stat().st_mtime_ns
    if os.path.lexists(pointer):  # a dangling link (its blob was deleted): not a file worth keeping
        pointer.unlink()
    creating(pointer)
    cache.link(blob, pointer)
    return _Placed(created_blob, True, mtime, hashed)


def missing_bytes(candidate: Candidate, env: HubEnv | None = None) -> int:
    """Bytes of `candidate` not in the cache yet (a partial file counts for what it holds)."""
    env = env or HubEnv.from_environ()
    repo = cache.RepoCache.of(env, candidate.repo)
    missing = 0
    for f in candidate.files:
        blob, pointer = repo.blob(f.digest.value), repo.pointer(candidate.commit, f.path)
        try:
            if pointer.exists() or blob.exists():
                continue
            partial = cache.partial_of(blob)
            have = partial.stat().st_size if partial.exists() else 0
        except OSError:  # a cache folder that is a file, or unreadable: all of it is missing
            have = 0
        missing += f.size - (have if have <= f.size else 0)
    return missing


def _carry_over(candidate: Candidate, repo: cache.RepoCache, old: str, repo_files: Sequence[HubFile],
                on_carried: Carried | None) -> tuple[list[tuple[Path, Path]], list[tuple[str, Path]]]:
    """refs/<revision> moves from commit `old` to the candidate's: llama.cpp (-hf, --offline) and
    huggingface_hub (local_files_only) look only in the snapshot it names, so every file of the
    old snapshot that the new commit has unchanged (the same LFS sha256, i.e. the same blob) is
    linked into the new snapshot too. A file the new commit changed or dropped is returned in
    `changed`: it stays in the old snapshot, for the caller to say so."""
    at_new = {f.path: f for f in repo_files}
    old_root = repo.folder / "snapshots" / old
    carried: list[tuple[Path, Path]] = []
    changed: list[tuple[str, Path]] = []
    if not old_root.is_dir():
        return carried, changed
    for dirpath, _dirs, names in os.walk(old_root):
        for name in sorted(names):
            old_path = Path(dirpath) / name
            repo_path = old_path.relative_to(old_root).as_posix()
            if not old_path.is_symlink() or not old_path.exists():
                continue  # a copied file (not a link to a blob) or a dangling link: nothing to carry
            new_path = repo.pointer(candidate.commit, repo_path)
            if os.path.lexists(new_path):
                continue
            blob = old_path.resolve()
            f = at_new.get(repo_path)
            if f is None or blob.parent != (repo.folder / "blobs").resolve() or blob.name != _digest_or_none(f):
                changed.append((repo_path, old_path))
                continue
            if on_carried is not None:
                on_carried(candidate, old_path, new_path)
            cache.link(repo.blob(blob.name), new_path)
            carried.append((old_path, new_path))
    return carried, changed


def _digest_or_none(f: HubFile) -> str | None:
    return f.sha256 or f.blob_id


def _cache_fault(exc: OSError, env: HubEnv) -> DownloadError:
    """A folder of the Hugging Face cache that cannot be written: one line naming it and the variable."""
    where = exc.filename or env.cache_dir
    var = "HF_HUB_CACHE" if os.environ.get("HF_HUB_CACHE") else "HF_HOME"
    reason = exc.strerror or str(exc)
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        reason = f"{reason} (a file is where a folder should be)"
    return DownloadError(f"cannot use the Hugging Face cache at {where}: {reason}",
                         f"make {env.cache_dir} a writable folder, or point {var} at one")


def download(candidate: Candidate, *, on_progress: Callable[[Progress], None] | None = None,
             on_created: Created | None = None, verified: Verified | None = None,
             free_space: Callable[[Path], int] = cache.free_space,
             check_model: Callable[[tuple[Path, ...]], object] | None = None,
             options: TransferOptions = TransferOptions(),
             lock_timeout: float = 10.0, env: HubEnv | None = None, rehash: bool = False,
             repo_files: Sequence[HubFile] = (), on_carried: Carried | None = None) -> Pulled:
    """Fetch what is missing of `candidate` into the Hugging Face cache and verify every file
    (sha256 against the Hub's LFS metadata, then the GGUF header, then `check_model(paths)` if
    given). Files already in the cache are checked and reused, never overwritten; partial files
    of an interrupted pull are resumed.

    on_created(candidate, path): told before each file this run makes in the cache (a partial
    file before its first byte, a blob before the finished partial becomes it, a snapshot link),
    so that the caller can record that moecli made it before it exists.
    verified(candidate): (blob, digest) -> the blob's mtime when the caller last saw it verified;
    a blob found with that mtime is not hashed again (CachedFile.hashed says which were), unless
    `rehash`: then every byte on disk is read and checked.
    repo_files: every file of the repo at the candidate's commit: when refs/<revision> moves to it,
    the unchanged files of the snapshot it named are carried into the new one (`on_carried` told
    before each link), see _carry_over.
    free_space(folder): the free-disk probe (injectable to test a small disk).
    A Hugging Face cache that cannot be written (read-only, a file where a folder is, no permission)
    is one DownloadError naming the folder."""
    env = env or HubEnv.from_environ()
    repo = cache.RepoCache.of(env, candidate.repo)
    known_good = verified(candidate) if verified and not rehash else {}
    targets = [(f, repo.blob(f.digest.value), repo.pointer(candidate.commit, f.path)) for f in candidate.files]

    missing = missing_bytes(candidate, env)
    if missing:
        free = free_space(repo.folder / "blobs")
        if free < missing:
            raise DiskSpaceError(f"not enough disk space for {candidate.name}: {fmt_bytes(missing)} still to download, "
                                 f"{fmt_bytes(free)} free in {env.cache_dir}",
                                 "free some space, or point HF_HUB_CACHE at a disk with room")

    def creating(path: Path) -> None:
        if on_created is not None:
            on_created(candidate, path)

    meter = _Meter(candidate, on_progress)
    headers = env.headers()
    files: list[CachedFile] = []
    created: list[Path] = []
    try:
        with quiet_hub():
            return _download(candidate, repo, targets, meter, headers, options, known_good, env, creating,
                             lock_timeout, check_model, repo_files, on_carried, files, created)
    except DownloadError:
        raise
    except OSError as exc:
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, HfHubHTTPError):
            raise
        raise _cache_fault(exc, env) from exc


def _download(candidate, repo, targets, meter, headers, options, known_good, env, creating, lock_timeout,
              check_model, repo_files, on_carried, files, created) -> Pulled:
    from filelock import Timeout

    old = repo.read_ref(candidate.revision) if candidate.revision != candidate.commit else None
    repo.write_ref(candidate.revision, candidate.commit)
    carried: list[tuple[Path, Path]] = []
    changed: list[tuple[str, Path]] = []
    if old and old != candidate.commit and repo_files:
        carried, changed = _carry_over(candidate, repo, old, repo_files, on_carried)
    for index, (f, blob, pointer) in enumerate(targets, start=1):
        lock = repo.lock(f.digest.value)
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with WeakFileLock(lock, timeout=lock_timeout):
                placed = _ensure_file(candidate, index, f, blob, pointer, meter, headers, options, known_good,
                                      env, creating)
        except Timeout:
            raise DownloadError(f"another process is downloading {f.path} (it holds {lock})",
                                "let it finish, then pull again") from None
        created += [p for p, made in ((blob, placed.created_blob), (pointer, placed.created_link)) if made]
        files.append(CachedFile(f.path, f.size, f.digest.value, pointer, blob, placed.verified_mtime_ns,
                                placed.hashed))
    meter.stage = "done"
    meter.emit(force=True)

    final_paths = tuple(pointer for _, _, pointer in targets)
    check_gguf(final_paths)
    if check_model is not None:
        check_model(final_paths)
    targets_new = {p for _, _, p in targets}
    changed = [(rp, p) for rp, p in changed if repo.pointer(candidate.commit, rp) not in targets_new]
    return Pulled(candidate, tuple(files), meter.downloaded, max(candidate.size - meter.downloaded, 0),
                  tuple(created), meter.transfer_seconds, old if old != candidate.commit else None,
                  tuple(carried), tuple(changed))


# -- the whole of `moecli pull` ------------------------------------------------------------------
def pull(ref: ModelRef, *, fits: Fits | None = None, on_choice: Callable[[Choice], None] | None = None,
         on_progress: Callable[[Progress], None] | None = None, on_created: Created | None = None,
         verified: Verified | None = None, free_space: Callable[[Path], int] = cache.free_space,
         check_model: Callable[[tuple[Path, ...]], object] | None = None,
         options: TransferOptions = TransferOptions(), env: HubEnv | None = None, rehash: bool = False,
         on_carried: Carried | None = None) -> Pulled:
    """`moecli pull REF`: list the repo, choose (telling `on_choice` why), download and verify
    (the hooks as for `download`). Whether a name is a Hub model at all is the caller's to say."""
    env = env or HubEnv.from_environ()
    listing = list_repo(ref, env)
    if listing.gated and not env.token:  # its files answer 401: say so before reading any header
        raise gated_without_token(ref.repo, env)
    choice = choose(listing, ref, fits)
    if on_choice:
        on_choice(choice)
    return download(choice.candidate, on_progress=on_progress, on_created=on_created, verified=verified,
                    free_space=free_space, check_model=check_model, options=options, env=env, rehash=rehash,
                    repo_files=listing.files, on_carried=on_carried)
