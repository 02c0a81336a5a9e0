"""`moecli pull`: from what the user typed to verified GGUF files in the Hugging Face cache.

    parse_ref("unsloth/Qwen3.6-35B-A3B-GGUF:Q4_K_M")      what was asked (aliases expanded)
    list_repo(ref)           -> RepoListing               the repo's GGUF models (huggingface_hub)
    choose(listing, ref, fits) -> Choice                  the tag asked, or the largest that fits
    download(candidate, on_progress=...) -> Pulled        resumable transfer, sha256, GGUF header,
                                                          store record
    pull(text, fits=..., on_choice=..., on_progress=...)  all of it, for the CLI

huggingface_hub does what it is good at: the Hub's API (listing with sizes and LFS sha256, gated
repos, revisions, errors), authentication (HF_TOKEN), the endpoint (HF_ENDPOINT) and the cache
layout (HF_HOME / HF_HUB_CACHE: blobs/ + snapshots/ symlinks + refs/, the layout `llama-server -hf`
reads too). The byte transfer is moecli.hub.transfer's, because huggingface_hub cannot resume across
processes (huggingface/huggingface_hub#4196) and does not check the sha256 of a plain HTTP download.

Nothing here prints: progress goes to callbacks, failures are MoecliError subclasses.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from moecli import paths, store
from moecli.errors import BadInput, DiskSpaceError, DoesNotFit, DownloadError, HubError, ModelFileError
from moecli.gguf import split_info
from moecli.hub.transfer import PARTIAL_SUFFIX, Digest, TransferOptions, fetch, hash_file
from moecli.units import fmt_bytes

DEFAULT_ENDPOINT = "https://huggingface.co"

# -- the environment, read when used ---------------------------------------------------------------
# huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE once, at import.
# moecli reads them at each call and hands them to huggingface_hub explicitly, so that what the
# environment says now is what is used (and tests can point each test at its own hub and cache).


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubEnv:
    endpoint: str
    cache_dir: Path  # the hub cache: models--org--name/{blobs,snapshots,refs}
    token: str | None
    offline: bool

    @classmethod
    def from_environ(cls) -> HubEnv:
        env = os.environ
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        hf_home = Path(os.path.expandvars(os.path.expanduser(
            env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))))
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
        return cls(endpoint=endpoint, cache_dir=Path(os.path.expandvars(os.path.expanduser(cache))),
                   token=_token(env, hf_home),
                   offline=_truthy(env.get("HF_HUB_OFFLINE")) or _truthy(env.get("TRANSFORMERS_OFFLINE")))

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def headers(self) -> dict[str, str]:
        """What to send to the Hub: the user agent, and the token when there is one."""
        return build_hf_headers(token=self.token or False, library_name="moecli")


def _token(env: Mapping[str, str], hf_home: Path) -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved. huggingface_hub's get_token() knows more
    (OAuth refresh, Colab) but reads the token file of the HF_HOME it was imported with."""
    token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if token:
        return token
    token_path = Path(os.path.expanduser(env.get("HF_TOKEN_PATH") or str(hf_home / "token")))
    if token_path == Path(constants.HF_TOKEN_PATH):
        from huggingface_hub import get_token

        return get_token()
    try:
        return token_path.read_text().strip() or None
    except OSError:
        return None


@contextmanager
def _quiet_hub():
    """huggingface_hub's retry chatter, warnings and progress bars are not for our user: moecli
    reports progress itself and turns failures into one line."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    disable_progress_bars()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"huggingface_hub(\..*)?")
        yield


# -- what the user typed ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    quant: str | None  # pulled when the user names no quant and it fits (see choose)


def load_aliases() -> dict[str, Alias]:
    """configs/aliases.toml shipped with moecli, then the user's <config_dir>/aliases.toml on top.
    Keys are lower-case."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
        import tomli as tomllib  # type: ignore[no-redef]

    aliases: dict[str, Alias] = {}
    for path in (paths.shipped_configs_dir() / "aliases.toml", paths.config_dir() / "aliases.toml"):
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"cannot read aliases from {path}: {exc}", "fix the TOML, or remove the file") from exc
        for name, entry in data.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("repo"), str):
                raise BadInput(f"alias {name!r} in {path} has no repo", 'write it as [name] repo = "org/repo" quant = "Q4_K_M"')
            aliases[name.lower()] = Alias(name, entry["repo"], entry.get("quant"))
    return aliases


@dataclass(frozen=True)
class ModelRef:
    repo: str  # org/name
    quant: str | None  # the tag typed after ':' (None: choose one)
    revision: str  # branch, tag or commit ("main" unless typed after '@')
    alias: Alias | None = None

    @property
    def text(self) -> str:
        out = self.repo + (f":{self.quant}" if self.quant else "")
        return out + (f"@{self.revision}" if self.revision != "main" else "")


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL_PREFIX = re.compile(r"^(?:https?://)?(?:www\.)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
_SUFFIXES = re.compile(r"([:@])([^:@]*)")


def parse_ref(text: str, aliases: Mapping[str, Alias] | None = None) -> ModelRef:
    """`org/repo[:QUANT][@revision]`, `hf.co/org/repo:QUANT`, a Hub URL, or an alias (`name[:QUANT]`)."""
    raw = text.strip()
    if not raw:
        raise BadInput("no model named", "name one like unsloth/Qwen3.6-35B-A3B-GGUF:Q4_K_M or an alias")
    body = _URL_PREFIX.sub("", raw)
    name, rest = re.match(r"^([^:@]*)(.*)$", body).groups()
    name = name.strip("/")
    quant = revision = None
    for marker, value in _SUFFIXES.findall(rest):
        if not value:
            raise BadInput(f"{raw!r} has an empty {'quant' if marker == ':' else 'revision'} after {marker!r}",
                           "write it like org/repo:Q4_K_M@main")
        if marker == ":" and quant is None:
            quant = value
        elif marker == "@" and revision is None:
            revision = value
        else:
            raise BadInput(f"{raw!r} names more than one {'quant' if marker == ':' else 'revision'}",
                           "write it like org/repo:Q4_K_M@main")
    if "/" not in name:
        known = load_aliases() if aliases is None else aliases
        alias = known.get(name.lower())
        if alias is None:
            names = ", ".join(sorted(known)) or "none"
            raise BadInput(f"{raw!r} is not a Hub repo (org/name), a model file or a known alias",
                           f"write org/repo[:QUANT]; known aliases: {names}")
        return ModelRef(alias.repo, quant, revision or "main", alias)
    if not _REPO_ID.match(name) or "--" in name or ".." in name or len(name) > 96 * 2:
        raise BadInput(f"{name!r} is not a valid Hub repo id", "write it as org/name, e.g. unsloth/Qwen3.6-35B-A3B-GGUF")
    return ModelRef(name, quant, revision or "main")


# -- GGUF files of a repo -------------------------------------------------------------------------
@dataclass(frozen=True)
class HubFile:
    path: str  # in the repo
    size: int
    sha256: str | None  # the LFS sha256; None for a file stored in git itself
    blob_id: str | None  # the git blob id

    @property
    def digest(self) -> Digest:
        if self.sha256:
            return Digest("sha256", self.sha256)
        if self.blob_id:
            return Digest("git-sha1", self.blob_id)
        raise HubError(f"the Hub lists no checksum for {self.path}", "moecli only pulls files it can verify")


@dataclass(frozen=True)
class Candidate:
    """One model of a repo: a GGUF file, or all the shards of a split one."""

    repo: str
    revision: str
    commit: str
    endpoint: str
    tag: str  # names it in the repo: the quant, or the file stem where quants repeat
    quant: str  # "Q4_K_M", "UD-Q4_K_XL", "BF16", ... (upper case)
    files: tuple[HubFile, ...]  # shards in order
    complete: bool = True  # False when the repo lacks some of the shards

    @property
    def name(self) -> str:
        return f"{self.repo}:{self.tag}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def urls(self) -> tuple[str, ...]:
        """Resolve URLs pinned to the commit (the Hub redirects them to its CDN)."""
        return tuple(hf_hub_url(self.repo, f.path, revision=self.commit, endpoint=self.endpoint) for f in self.files)


@dataclass(frozen=True)
class RemoteGGUF:
    """What `gguf.read_model(url, headers=...)` needs to read a candidate's headers by range requests."""

    urls: tuple[str, ...]  # first shard first
    headers: dict[str, str] = field(hash=False)


def remote_gguf(candidate: Candidate, env: HubEnv | None = None) -> RemoteGGUF:
    env = env or HubEnv.from_environ()
    return RemoteGGUF(candidate.urls, env.headers())


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str
    commit: str
    gated: bool
    files: tuple[HubFile, ...]
    candidates: tuple[Candidate, ...]  # largest first

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(c.tag for c in self.candidates)


_QUANT = re.compile(
    r"(?:^|[-._])(?P<tag>(?:UD-)?(?:I?Q\d[A-Z0-9_]*|TQ\d[A-Z0-9_]*|MXFP4[A-Z0-9_]*|NVFP4[A-Z0-9_]*"
    r"|BF16|F16|FP16|F32|FP32|FP8[A-Z0-9_]*))$", re.IGNORECASE)
_LAST_SEGMENT = re.compile(r"[-.](?P<tag>[A-Z0-9_]+)$", re.IGNORECASE)  # llama.cpp's get_gguf_split_info
# Files that are not the model, as llama.cpp's gguf_filename_is_model (common/download.cpp) says.
_NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")


def is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return name.endswith(".gguf") and not any(word in name for word in _NOT_MODEL)


def quant_of(path: str) -> str:
    """The quant tag a GGUF file name carries: `Qwen3.6-35B-A3B-UD-Q4_K_XL.gguf` -> UD-Q4_K_XL;
    from the folder when the name has none (`Q4_K_M/model-00001-of-00002.gguf`)."""
    prefix, _, _ = split_info(path)
    folder, _, stem = prefix.rpartition("/")
    for text in (stem, folder.rsplit("/", 1)[-1]):
        match = _QUANT.search(text)
        if match:
            return match["tag"].upper()
    match = _LAST_SEGMENT.search(stem)
    return (match["tag"] if match else stem).upper()


def gguf_candidates(files: Sequence[HubFile], *, repo: str, revision: str, commit: str,
                    endpoint: str) -> tuple[Candidate, ...]:
    """Group a repo's GGUF files into models (shards of one split file together), largest first."""
    groups: dict[tuple[str, int], list[tuple[int, HubFile]]] = {}
    for f in files:
        if not is_model_file(f.path):
            continue
        prefix, no, count = split_info(f.path)
        groups.setdefault((prefix, count), []).append((no, f))
    quants = {key: quant_of(key[0] + ".gguf") for key in groups}
    repeated = {q for q in quants.values() if list(quants.values()).count(q) > 1}
    out = []
    for (prefix, count), members in groups.items():
        members.sort(key=lambda m: m[0])
        quant = quants[(prefix, count)]
        tag = prefix.rsplit("/", 1)[-1] if quant in repeated else quant
        complete = [no for no, _ in members] == list(range(1, count + 1))
        out.append(Candidate(repo, revision, commit, endpoint, tag, quant, tuple(f for _, f in members), complete))
    if len({c.tag for c in out}) < len(out):  # same stem in two folders: use the path
        out = [replace(c, tag=split_info(c.files[0].path)[0]) for c in out]
    return tuple(sorted(out, key=lambda c: (-c.size, c.tag)))


def list_repo(ref: ModelRef, env: HubEnv | None = None) -> RepoListing:
    """The repo's files (sizes, LFS sha256) at `ref.revision`, pinned to its commit."""
    env = env or HubEnv.from_environ()
    if env.offline:
        raise HubError(f"cannot list {ref.repo}: HF_HUB_OFFLINE is set",
                       "unset HF_HUB_OFFLINE, or use a model already pulled (`moecli list`)")
    with _quiet_hub(), _hub_errors(ref.repo, ref.revision, env):
        try:
            info = env.api().model_info(ref.repo, revision=ref.revision, files_metadata=True)
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the Hub's JSON
            raise HubError(f"{env.endpoint} does not answer like the Hugging Face Hub ({type(exc).__name__})",
                           "check HF_ENDPOINT: it must name the Hub or a mirror of its API") from None
    files = tuple(HubFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, s.blob_id)
                  for s in info.siblings or ())
    commit = info.sha or ref.revision
    return RepoListing(ref.repo, ref.revision, commit, bool(info.gated), files,
                       gguf_candidates(files, repo=ref.repo, revision=ref.revision, commit=commit, endpoint=env.endpoint))


# -- which one ------------------------------------------------------------------------------------
Fits = Callable[[Candidate], tuple[bool, str]]  # (fits this machine?, why) - the planner's verdict


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    reason: str  # one line: why this one
    considered: tuple[tuple[Candidate, bool, str], ...] = ()  # what `fits` said, largest first


def _match(listing: RepoListing, wanted: str) -> Candidate:
    """The candidate a typed tag names (case-insensitive): its tag, its quant, or the end of its
    file name as llama.cpp matches `-hf repo:tag` (so `Q4_K_XL` finds `UD-Q4_K_XL`)."""
    w = wanted.upper()
    rules = (
        lambda c: c.tag.upper() == w,
        lambda c: c.quant == w,
        lambda c: split_info(c.files[0].path)[0].upper().endswith(("-" + w, "." + w, "/" + w)) or c.quant.endswith("-" + w),
    )
    for rule in rules:
        found = [c for c in listing.candidates if rule(c)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise HubError(f"{wanted} names {len(found)} models in {listing.repo}: {', '.join(c.tag for c in found)}",
                           f"name one of them, e.g. {listing.repo}:{found[0].tag}")
    raise HubError(f"{listing.repo} has no {wanted} GGUF", f"tags in the repo: {', '.join(listing.tags)}")


def _complete(candidate: Candidate) -> Candidate:
    if not candidate.complete:
        have = len(candidate.files)
        raise HubError(f"{candidate.name} is split, but the repo holds only {have} of its shards",
                       "pick another quant; the repo's owner has to upload the missing shards")
    return candidate


def choose(listing: RepoListing, ref: ModelRef, fits: Fits | None = None) -> Choice:
    """The model to pull: the tag typed; else the alias's quant if it fits; else the largest quant
    that `fits` accepts; without `fits`, llama.cpp's default (Q4_K_M, then Q8_0, then the first)."""
    if not listing.candidates:
        raise HubError(f"{listing.repo} holds no GGUF model file",
                       "moecli runs GGUF models: look for a -GGUF repo of this model")
    if ref.quant:
        asked = _complete(_match(listing, ref.quant))
        same = asked.tag.upper() == ref.quant.upper()
        return Choice(asked, f"{asked.tag} was asked for" if same else f"{asked.tag} is the {ref.quant} of the repo")
    complete = [c for c in listing.candidates if c.complete]
    if not complete:
        raise HubError(f"every GGUF of {listing.repo} lacks some of its shards",
                       "the repo's owner has to upload the missing shards")
    considered: list[tuple[Candidate, bool, str]] = []
    if ref.alias and ref.alias.quant:
        preferred = _complete(_match(listing, ref.alias.quant))
        if fits is None:
            return Choice(preferred, f"{preferred.tag} is the default quant of {ref.alias.name}")
        ok, why = fits(preferred)
        considered.append((preferred, ok, why))
        if ok:
            return Choice(preferred, f"{preferred.tag} is the default quant of {ref.alias.name} and fits: {why}",
                          tuple(considered))
    if fits is None:
        for default in ("Q4_K_M", "Q8_0"):
            for c in complete:
                if c.quant == default:
                    return Choice(c, f"{c.tag} is llama.cpp's default quant")
        first = sorted(complete, key=lambda c: c.files[0].path)[0]
        return Choice(first, f"{first.tag} is the first GGUF in the repo")
    for c in complete:  # largest first
        if any(c is seen for seen, _, _ in considered):
            continue
        ok, why = fits(c)
        considered.append((c, ok, why))
        if ok:
            larger = [s for s, fit, _ in considered if not fit]
            note = f" (larger: {', '.join(s.tag for s in larger)} do not)" if larger else ""
            return Choice(c, f"{c.tag} ({fmt_bytes(c.size)}) is the largest quant that fits this machine{note}: {why}",
                          tuple(considered))
    smallest, _, why = considered[-1]
    raise DoesNotFit(f"no quant of {listing.repo} fits this machine; the smallest, {smallest.tag} "
                     f"({fmt_bytes(smallest.size)}): {why}",
                     f"name a quant to pull it anyway ({listing.repo}:{smallest.tag})")


# -- errors ---------------------------------------------------------------------------------------
def gated_without_token(repo: str, env: HubEnv) -> HubError:
    return HubError(f"{repo} is gated: the Hub serves it only to logged-in users who accepted its terms",
                    f"accept them on {env.endpoint}/{repo}, then set HF_TOKEN (or run `hf auth login`)")


@contextmanager
def _hub_errors(repo: str, revision: str, env: HubEnv, path: str | None = None):
    """huggingface_hub's and httpx2's exceptions -> one line naming the problem and the fix."""
    page = f"{env.endpoint}/{repo}"
    try:
        yield
    except GatedRepoError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if env.token is None or status == 401:
            raise gated_without_token(repo, env) from None
        raise HubError(f"{repo} is gated and your token has not been granted access",
                       f"ask for access on {page}; HF_TOKEN must belong to the account that did") from None
    except RepositoryNotFoundError:
        hint = f"check the name on {env.endpoint}" + ("" if env.token else "; a private repo needs HF_TOKEN")
        raise HubError(f"{repo} is not on {env.endpoint} (or is private)", hint) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r}",
                       f"name a branch, tag or commit of {page}, or leave out @{revision}") from None
    except RemoteEntryNotFoundError:
        raise HubError(f"{repo} has no file {path!r} at {revision}",
                       "the repo changed while pulling; pull again") from None
    except DisabledRepoError:
        raise HubError(f"{repo} has been disabled on the Hub", "pick another repo") from None
    except OfflineModeIsEnabled:
        raise HubError(f"cannot reach {env.endpoint}: HF_HUB_OFFLINE is set",
                       "unset HF_HUB_OFFLINE, or use a model already pulled") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        if status == 401:
            raise HubError(f"{env.endpoint} refused the token in HF_TOKEN (401 invalid credentials)",
                           "set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens), or unset it") from None
        raise HubError(f"{env.endpoint} answered {status} for {repo}", "try again later; check HF_ENDPOINT") from None
    except httpx2.TransportError as exc:
        raise HubError(f"cannot reach {env.endpoint}: {_transport_reason(exc)}",
                       "check the network (or HF_ENDPOINT); pulled models run offline") from None


def _transport_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return "the host name does not resolve"
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    return text.splitlines()[0][:120]


# -- download -------------------------------------------------------------------------------------
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
class Pulled:
    name: str
    candidate: Candidate
    paths: tuple[Path, ...]  # snapshot paths, first shard first
    downloaded: int  # bytes transferred by this run
    reused: int  # bytes that were on disk already
    record: store.StoredModel
    seconds: float = 0.0  # wall time of the transfers (with the hash of any resumed prefix)


def storage_folder(env: HubEnv, repo: str) -> Path:
    """`models--org--name` in the hub cache, as huggingface_hub's repo_folder_name builds it."""
    return env.cache_dir / ("models--" + repo.replace("/", "--"))


def _free_space(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<path> -> ../../blobs/<digest>, relative, as huggingface_hub makes it."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError as exc:
        raise DownloadError(f"cannot link {pointer} to its blob: {exc.strerror or exc}",
                            "the Hugging Face cache needs symbolic links (on Windows: developer mode)") from exc


def _write_ref(folder: Path, revision: str, commit: str) -> None:
    """refs/<branch> holds the commit (not written when the revision is the commit itself)."""
    if revision == commit:
        return
    ref = folder / "refs" / revision
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


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


def _verify_present(path: Path, f: HubFile, digest: Digest, meter: _Meter, known_mtime: int | None) -> int:
    """Check a file that is already in the cache; returns its mtime. Hashing is skipped when
    moecli verified this very blob before (same mtime); otherwise the bytes are read, because they
    never passed through moecli's hash."""
    stat = path.stat()
    if stat.st_size == f.size and known_mtime == stat.st_mtime_ns:
        meter.add(f.size, transferred=False)
        return stat.st_mtime_ns
    got = hash_file(path, digest, f.size, lambda n: meter.add(n, transferred=False)) \
        if stat.st_size == f.size else None
    if got != digest.value:
        raise DownloadError(f"{f.path} is already in the Hugging Face cache but does not match the Hub's "
                            f"{digest.kind} ({path})",
                            f"moecli never deletes what it finds in the cache: delete {path}, then pull again")
    return stat.st_mtime_ns


def _ensure_file(candidate: Candidate, index: int, f: HubFile, blob: Path, pointer: Path, meter: _Meter,
                 headers: Mapping[str, str], options: TransferOptions,
                 known_good: Mapping[tuple[Path, str], int], env: HubEnv) -> _Placed:
    digest = f.digest
    known = known_good.get((blob, digest.value))
    if pointer.exists():  # a snapshot file, ours or huggingface_hub's or llama.cpp's: reuse it
        meter.at("check", index)
        return _Placed(False, False, _verify_present(pointer.resolve(), f, digest, meter, known))
    created_blob = False
    if blob.exists():
        meter.at("check", index)
        mtime = _verify_present(blob, f, digest, meter, known)
    else:
        meter.at("download", index)
        partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
        url = hf_hub_url(candidate.repo, f.path, revision=candidate.commit, endpoint=candidate.endpoint)
        began = time.monotonic()
        with _hub_errors(candidate.repo, candidate.revision, env, f.path):
            fetch(url, partial, label=f.path, size=f.size, digest=digest, headers=headers,
                  on_bytes=lambda n: meter.add(n, transferred=True),
                  on_rehash=lambda n: meter.add(n, transferred=False),
                  on_restart=lambda n: meter.add(-n, transferred=False), options=options)
        meter.transfer_seconds += time.monotonic() - began
        if blob.exists():  # placed meanwhile by a tool that takes no lock: keep that one
            partial.unlink()
        else:
            os.replace(partial, blob)
            store.note_created(candidate.name, [blob])  # at once: a pull that stops later still owns it
            created_blob = True
        mtime = blob.stat().st_mtime_ns
    if os.path.lexists(pointer):  # a dangling link (its blob was deleted): not a file worth keeping
        pointer.unlink()
    _link(blob, pointer)
    store.note_created(candidate.name, [pointer])
    return _Placed(created_blob, True, mtime)


def download(candidate: Candidate, *, on_progress: Callable[[Progress], None] | None = None,
             free_space: Callable[[Path], int] = _free_space,
             check_model: Callable[[tuple[Path, ...]], object] | None = None,
             options: TransferOptions = TransferOptions(),
             lock_timeout: float = 10.0, env: HubEnv | None = None) -> Pulled:
    """Fetch what is missing of `candidate` into the Hugging Face cache, verify every file
    (sha256 against the Hub's LFS metadata, then the GGUF header, then `check_model(paths)` if
    given) and record it in the store. Files already in the cache are checked and reused, never
    overwritten; partial files of an interrupted pull are resumed. `free_space(folder)` is the
    free-disk probe (injectable to test a small disk)."""
    from filelock import Timeout

    env = env or HubEnv.from_environ()
    folder = storage_folder(env, candidate.repo)
    blobs = folder / "blobs"
    snapshot = folder / "snapshots" / candidate.commit
    previous = store.find(candidate.repo, candidate.tag)
    known_good = {(f.blob, f.digest): f.verified_mtime_ns for f in previous.files} if previous else {}
    created: list[Path] = list(previous.created) if previous else []
    targets = [(f, blobs / f.digest.value, snapshot / f.path) for f in candidate.files]

    missing = 0
    for f, blob, pointer in targets:
        if pointer.exists() or blob.exists():
            continue
        partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
        have = partial.stat().st_size if partial.exists() else 0
        missing += f.size - (have if have <= f.size else 0)
    if missing:
        free = free_space(blobs)
        if free < missing:
            raise DiskSpaceError(f"not enough disk space for {candidate.name}: {fmt_bytes(missing)} still to download, "
                                 f"{fmt_bytes(free)} free in {env.cache_dir}",
                                 "free some space, or point HF_HUB_CACHE at a disk with room")

    meter = _Meter(candidate, on_progress)
    headers = env.headers()
    files: list[store.StoredFile] = []
    with _quiet_hub():
        _write_ref(folder, candidate.revision, candidate.commit)
        for index, (f, blob, pointer) in enumerate(targets, start=1):
            lock = env.cache_dir / ".locks" / folder.name / f"{f.digest.value}.lock"  # huggingface_hub's lock
            lock.parent.mkdir(parents=True, exist_ok=True)
            try:
                with WeakFileLock(lock, timeout=lock_timeout):
                    placed = _ensure_file(candidate, index, f, blob, pointer, meter, headers, options, known_good, env)
            except Timeout:
                raise DownloadError(f"another process is downloading {f.path} (it holds {lock})",
                                    "let it finish, then pull again") from None
            created += [p for p, made in ((blob, placed.created_blob), (pointer, placed.created_link)) if made]
            files.append(store.StoredFile(f.path, f.size, f.digest.value, pointer, blob, placed.verified_mtime_ns))
        meter.stage = "done"
        meter.emit(force=True)

    final_paths = tuple(pointer for _, _, pointer in targets)
    check_gguf(final_paths)
    if check_model is not None:
        check_model(final_paths)
    record = store.add(store.StoredModel(
        name=candidate.name, repo=candidate.repo, tag=candidate.tag, quant=candidate.quant,
        revision=candidate.revision, commit=candidate.commit, files=tuple(files), pulled_at=store.now(),
        created=tuple(dict.fromkeys(created))))
    return Pulled(candidate.name, candidate, final_paths, meter.downloaded,
                  max(candidate.size - meter.downloaded, 0), record, meter.transfer_seconds)


# -- the whole of `moecli pull` ------------------------------------------------------------------
def _from_record(record: store.StoredModel, env: HubEnv) -> Candidate:
    files = tuple(HubFile(f.repo_path, f.size, f.digest if len(f.digest) == 64 else None,
                          f.digest if len(f.digest) == 40 else None) for f in record.files)
    return Candidate(record.repo, record.revision, record.commit, env.endpoint, record.tag, record.quant, files)


def pull(text: str, *, fits: Fits | None = None, on_choice: Callable[[Choice], None] | None = None,
         on_progress: Callable[[Progress], None] | None = None, free_space: Callable[[Path], int] = _free_space,
         check_model: Callable[[tuple[Path, ...]], object] | None = None,
         options: TransferOptions = TransferOptions(),
         aliases: Mapping[str, Alias] | None = None) -> Pulled:
    """`moecli pull TEXT`: resolve, choose (telling `on_choice` why), download and verify."""
    from moecli.models import looks_like_path  # models imports this module lazily: no cycle

    if looks_like_path(text):
        raise BadInput(f"{text} is a local file: there is nothing to pull", f"use it directly: moecli run {text}")
    env = HubEnv.from_environ()
    ref = parse_ref(text, aliases)
    if env.offline:
        record = store.find(ref.repo, ref.quant or (ref.alias.quant if ref.alias else None))
        if record is None or not record.present:
            raise HubError(f"{ref.text} is not pulled and HF_HUB_OFFLINE is set",
                           "unset HF_HUB_OFFLINE to download it")
        candidate = _from_record(record, env)
        if on_choice:
            on_choice(Choice(candidate, "already pulled (offline)"))
        return Pulled(record.name, candidate, record.paths, 0, record.size, record)
    listing = list_repo(ref, env)
    if listing.gated and not env.token:  # its files answer 401: say so before reading any header
        raise gated_without_token(ref.repo, env)
    choice = choose(listing, ref, fits)
    if on_choice:
        on_choice(choice)
    return download(choice.candidate, on_progress=on_progress, free_space=free_space, check_model=check_model,
                    options=options, env=env)
