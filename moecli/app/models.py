"""The models a user has: pulling one (with the plan shown before a byte is downloaded), the
pulled ones with whether each fits this machine, and removing one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import gguf, planner, store
from moecli.errors import BadInput, DownloadError, HubError, MoecliError
from moecli.facts import MachineFacts

from .planning import HubFits, Verdict, verdict
from .resolve import looks_like_path

if TYPE_CHECKING:
    from moecli import hub


@dataclass(frozen=True)
class PrePlan:
    """What a pull shows before downloading: the chosen file, why, and its plan on this machine
    (from its remote header: the plan that chose the quant, not a second read)."""

    choice: hub.Choice
    plan: planner.Plan | None
    verdict: Verdict | None
    problem: str | None = None  # why it could not be planned
    to_fetch: int = 0  # bytes not in the cache yet (0: nothing will be downloaded)
    offline: bool = False  # HF_HUB_OFFLINE: what the store has, nothing fetched


@dataclass(frozen=True)
class PullReport:
    """What `moecli pull` did: the transfer, the record, and what a moved refs/main meant."""

    pulled: hub.Pulled
    record: store.StoredModel
    offline: bool = False
    moved: tuple[str, ...] = ()  # earlier-pulled models now linked into the new snapshot too
    changed: tuple[tuple[str, str], ...] = ()  # (model, repo path): changed upstream, not at the new commit
    llama_cache: str | None = None  # LLAMA_CACHE points llama-server elsewhere: the one line saying so

    @property
    def name(self) -> str:
        return self.pulled.name

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.pulled.paths

    @property
    def hashed_all(self) -> bool:
        return all(f.hashed for f in self.pulled.files)

    @property
    def verified_on(self) -> datetime | None:
        """The oldest hash date of the files not hashed by this run (None: unknown or all hashed)."""
        dates = [f.verified_at for f, p in zip(self.record.files, self.pulled.files) if not p.hashed and f.verified_at]
        return min(dates) if dates else None


def pull(name: str, machine_facts: MachineFacts, *, before_download: Callable[[PrePlan], None] | None = None,
         on_progress: Callable[[hub.Progress], None] | None = None, rehash: bool = False) -> PullReport:
    """`moecli pull NAME`: without a quant, the largest that the planner says fits this machine;
    `before_download` sees the plan first (and may raise to stop). `rehash`: every file already
    on disk is hashed again (`pull --verify`)."""
    from moecli import hub

    fits = HubFits(machine_facts)
    offline = hub.HubEnv.from_environ().offline

    def on_choice(choice: hub.Choice) -> None:
        to_fetch = 0 if offline else hub.missing_bytes(choice.candidate)
        try:
            the_plan = fits.plan(choice.candidate)
            pre = PrePlan(choice, the_plan, verdict(the_plan), to_fetch=to_fetch, offline=offline)
        except MoecliError as exc:
            pre = PrePlan(choice, None, None, exc.message, to_fetch=to_fetch, offline=offline)
        if before_download:
            before_download(pre)

    return pull_and_record(name, fits=fits, on_choice=on_choice, on_progress=on_progress, rehash=rehash,
                           check_model=lambda paths: gguf.read_model(paths[0]), report=True)


def pull_and_record(name: str, *, on_choice: Callable[[hub.Choice], None] | None = None, rehash: bool = False,
                    report: bool = False, **pull_options):
    """A Hub model (not a local file) pulled by hub.pull (`pull_options` as there) and recorded in
    the store: each partial file, blob and link moecli makes is noted before it exists (a home
    that cannot be written stops the pull before its first byte), the record is written once
    every file is verified. With HF_HUB_OFFLINE, what the store has (hashed again with `rehash`).
    Returns (Pulled, record), or the PullReport where `report`."""
    from moecli import hub

    if looks_like_path(name):
        if name.lower().endswith(".gguf") or Path(name).expanduser().exists():
            raise BadInput(f"{name} is a local file: there is nothing to pull", f"use it directly: moecli run {name}")
        raise BadInput(f"{name!r} is not a Hub repo id (org/name), and there is no such file",
                       "name a Hub model like unsloth/Qwen3.6-35B-A3B-GGUF:Q4_K_M, or a GGUF file that exists")
    ref = hub.parse_ref(name)
    env = hub.HubEnv.from_environ()
    conflict = env.llama_cache_conflict()
    if env.offline:
        record = store.find(ref.repo, ref.quant or (ref.alias.quant if ref.alias else None))
        if record is None or not record.present:
            raise HubError(f"{ref.text} is not pulled and HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it")
        hub_files = tuple(hub.HubFile(f.repo_path, f.size, f.digest if len(f.digest) == 64 else None,
                                      f.digest if len(f.digest) == 40 else None) for f in record.files)
        candidate = hub.Candidate(record.repo, record.revision, record.commit, env.endpoint, record.tag, record.quant,
                                  hub_files)
        if on_choice:
            on_choice(hub.Choice(candidate, "already pulled (offline: nothing is fetched)"))
        if rehash:
            record = _checked(record, verify_files(record))
        files = tuple(hub.CachedFile(f.repo_path, f.size, f.digest, f.path, f.blob, f.verified_mtime_ns, rehash)
                      for f in record.files)
        pulled = hub.Pulled(candidate, files, 0, record.size)
        return PullReport(pulled, record, offline=True, llama_cache=conflict) if report else (pulled, record)

    def on_created(candidate: hub.Candidate, path: Path) -> None:
        # a partial file too, before its first byte: an interrupted pull stays moecli's to list and remove
        store.note_created(candidate.name, [path], size=candidate.size)

    owners: dict[Path, list[str]] = {}
    for m in store.list_models():
        for f in m.files:
            owners.setdefault(f.path, []).append(m.name)

    def on_carried(candidate: hub.Candidate, old: Path, new: Path) -> None:
        for owner in owners.get(old) or [candidate.name]:
            store.note_created(owner, [new])

    def verified(candidate: hub.Candidate) -> dict[tuple[Path, str], int]:
        previous = store.find(candidate.repo, candidate.tag)
        return {(f.blob, f.digest): f.verified_mtime_ns for f in previous.files} if previous else {}

    pulled = hub.pull(ref, on_choice=on_choice, on_created=on_created, verified=verified, env=env, rehash=rehash,
                      on_carried=on_carried, **pull_options)
    c = pulled.candidate
    previous = store.find(c.repo, c.tag)
    before = {(f.blob, f.digest): f.verified_at for f in previous.files} if previous else {}
    now = store.now()
    record = store.add(store.StoredModel(
        name=c.name, repo=c.repo, tag=c.tag, quant=c.quant, revision=c.revision, commit=c.commit,
        files=tuple(store.StoredFile(f.repo_path, f.size, f.digest, f.path, f.blob, f.verified_mtime_ns,
                                     now if f.hashed else before.get((f.blob, f.digest)))
                    for f in pulled.files),
        pulled_at=now, created=tuple(dict.fromkeys((*(previous.created if previous else ()), *pulled.created)))))
    moved = _move_records(pulled, skip=record.name)
    changed = tuple((owner, repo_path) for repo_path, old in pulled.changed for owner in owners.get(old, ())
                    if owner != record.name)
    if report:
        return PullReport(pulled, record, moved=moved, changed=changed, llama_cache=conflict)
    return pulled, record


def _move_records(pulled: hub.Pulled, skip: str) -> tuple[str, ...]:
    """Earlier-pulled models of the repo whose every file was carried into the new snapshot now
    point there (the snapshot `llama-server -hf` and huggingface_hub look in)."""
    carried = dict(pulled.carried)
    moved = []
    for m in store.list_models():
        if m.name == skip or m.repo != pulled.candidate.repo or not m.files:
            continue
        if all(f.path in carried for f in m.files):
            files = tuple(replace(f, path=carried[f.path]) for f in m.files)
            store.add(replace(m, files=files, commit=pulled.candidate.commit))  # the new links: in its ledger
            moved.append(m.name)
    return tuple(moved)


# -- verify ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileCheck:
    repo_path: str
    path: Path
    ok: bool
    why: str  # "sha256 matches", "sha256 is 1234…, the Hub's is abcd…", "missing", ...


def verify_files(record: store.StoredModel, on_bytes: Callable[[int], None] | None = None) -> tuple[FileCheck, ...]:
    """Hash every file of a pulled model against the digest the Hub listed when it was pulled
    (recorded in the store): nothing is trusted, no network is needed."""
    from moecli.hub import Digest
    from moecli.hub.transfer import hash_file

    checks = []
    for f in record.files:
        digest = Digest("sha256" if len(f.digest) == 64 else "git-sha1", f.digest)
        if not f.path.exists():
            checks.append(FileCheck(f.repo_path, f.path, False, "is missing from the Hugging Face cache"))
            continue
        try:
            size = f.path.stat().st_size
            got = hash_file(f.path, digest, size, on_bytes) if size == f.size else None
        except OSError as exc:
            checks.append(FileCheck(f.repo_path, f.path, False, f"cannot be read: {exc.strerror or exc}"))
            continue
        if got is None:
            checks.append(FileCheck(f.repo_path, f.path, False, f"holds {size} bytes, the Hub's file {f.size}"))
        elif got != f.digest:
            checks.append(FileCheck(f.repo_path, f.path, False,
                                    f"{digest.kind} is {got[:16]}…, the Hub's is {f.digest[:16]}…"))
        else:
            checks.append(FileCheck(f.repo_path, f.path, True, f"{digest.kind} matches the Hub's"))
    return tuple(checks)


def _checked(record: store.StoredModel, checks: tuple[FileCheck, ...]) -> store.StoredModel:
    """The record with the files that hashed right marked verified now; raises for the others."""
    now = store.now()
    files = []
    for f, check in zip(record.files, checks):
        if check.ok:
            f = replace(f, verified_at=now, verified_mtime_ns=f.blob.stat().st_mtime_ns)
        files.append(f)
    record = store.add(replace(record, files=tuple(files)))
    bad = [c for c in checks if not c.ok]
    if bad:
        raise DownloadError(f"{len(bad)} of {len(checks)} files of {record.name} do not verify: "
                            f"{bad[0].repo_path} {bad[0].why}",
                            f"delete {bad[0].path.resolve()}, then `moecli pull {record.name}` fetches it again")
    return record


def verify(name: str, on_file: Callable[[FileCheck], None] | None = None,
           on_bytes: Callable[[int], None] | None = None) -> tuple[FileCheck, ...]:
    """`moecli verify NAME`: every file re-hashed, each reported to `on_file`; the record notes
    when each was verified. Raises DownloadError when any does not verify."""
    record = store.get(name)
    checks = verify_files(record, on_bytes)
    for check in checks:
        if on_file:
            on_file(check)
    _checked(record, checks)
    return checks


@dataclass(frozen=True)
class Listed:
    record: store.StoredModel
    verdict: Verdict


def pulled_models(machine_facts: MachineFacts) -> list[Listed]:
    """The models pulled with moecli, each with the planner's verdict on this machine."""
    listed = []
    for record in store.list_models():
        if not record.present:
            v = Verdict(False, "its files are gone from the Hugging Face cache")
        else:
            try:
                v = verdict(planner.plan(gguf.read_model(record.path), machine_facts, planner.Wishes()))
            except MoecliError as exc:
                v = Verdict(False, exc.message)
        listed.append(Listed(record, v))
    return listed


def partial_pulls() -> tuple[store.PartialPull, ...]:
    """Pulls that stopped part-way (their partial files, with progress)."""
    return store.partial_pulls()


def damaged_records() -> tuple[store.Damaged, ...]:
    return store.damaged_records()


def plan_removal(name: str) -> store.Removal:
    """What `moecli rm NAME` would delete and keep (nothing moecli did not create)."""
    return store.plan_removal(name)


def remove(removal: store.Removal) -> None:
    store.remove(removal)
