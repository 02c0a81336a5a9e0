"""A repo's GGUF models, and which one to pull.

    list_repo(ref) -> RepoListing          the files at a revision (sizes, LFS sha256), pinned to its
                                           commit, grouped into models (huggingface_hub's model_info)
    choose(listing, ref, fits) -> Choice   the tag asked, or the largest quant that fits
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from huggingface_hub import hf_hub_url

from moecli.errors import DoesNotFit, HubError
from moecli.gguf import split_info
from moecli.hub.env import HubEnv, quiet_hub
from moecli.hub.errors import RepoRequest, translated
from moecli.hub.refs import ModelRef
from moecli.hub.transfer import Digest
from moecli.units import fmt_bytes


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
    with quiet_hub(), translated(RepoRequest(env, ref.repo, ref.revision)):
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
