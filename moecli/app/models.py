"""The models a user has: pulling one (with the plan shown before a byte is downloaded), the
pulled ones with whether each fits this machine, and removing one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import gguf, planner, store
from moecli.errors import BadInput, HubError, MoecliError
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


def pull(name: str, machine_facts: MachineFacts, *, before_download: Callable[[PrePlan], None] | None = None,
         on_progress: Callable[[hub.Progress], None] | None = None) -> hub.Pulled:
    """`moecli pull NAME`: without a quant, the largest that the planner says fits this machine;
    `before_download` sees the plan first (and may raise to stop)."""
    fits = HubFits(machine_facts)

    def on_choice(choice: hub.Choice) -> None:
        try:
            the_plan = fits.plan(choice.candidate)
            pre = PrePlan(choice, the_plan, verdict(the_plan))
        except MoecliError as exc:
            pre = PrePlan(choice, None, None, exc.message)
        if before_download:
            before_download(pre)

    pulled, _ = pull_and_record(name, fits=fits, on_choice=on_choice, on_progress=on_progress,
                                check_model=lambda paths: gguf.read_model(paths[0]))
    return pulled


def pull_and_record(name: str, *, on_choice: Callable[[hub.Choice], None] | None = None,
                    **pull_options) -> tuple[hub.Pulled, store.StoredModel]:
    """A Hub model (not a local file) pulled by hub.pull (`pull_options` as there) and recorded in
    the store: each blob and link moecli makes is noted before it exists, the record is written
    once every file is verified. With HF_HUB_OFFLINE, what the store has."""
    from moecli import hub

    if looks_like_path(name):
        raise BadInput(f"{name} is a local file: there is nothing to pull", f"use it directly: moecli run {name}")
    ref = hub.parse_ref(name)
    env = hub.HubEnv.from_environ()
    if env.offline:
        record = store.find(ref.repo, ref.quant or (ref.alias.quant if ref.alias else None))
        if record is None or not record.present:
            raise HubError(f"{ref.text} is not pulled and HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it")
        hub_files = tuple(hub.HubFile(f.repo_path, f.size, f.digest if len(f.digest) == 64 else None,
                                      f.digest if len(f.digest) == 40 else None) for f in record.files)
        candidate = hub.Candidate(record.repo, record.revision, record.commit, env.endpoint, record.tag, record.quant,
                                  hub_files)
        if on_choice:
            on_choice(hub.Choice(candidate, "already pulled (offline)"))
        files = tuple(hub.CachedFile(f.repo_path, f.size, f.digest, f.path, f.blob, f.verified_mtime_ns)
                      for f in record.files)
        return hub.Pulled(candidate, files, 0, record.size), record

    def on_created(candidate: hub.Candidate, path: Path) -> None:
        if not path.name.endswith(hub.PARTIAL_SUFFIX):  # the store records blobs and links, not partial files
            store.note_created(candidate.name, [path])

    def verified(candidate: hub.Candidate) -> dict[tuple[Path, str], int]:
        previous = store.find(candidate.repo, candidate.tag)
        return {(f.blob, f.digest): f.verified_mtime_ns for f in previous.files} if previous else {}

    pulled = hub.pull(ref, on_choice=on_choice, on_created=on_created, verified=verified, env=env, **pull_options)
    c = pulled.candidate
    previous = store.find(c.repo, c.tag)
    record = store.add(store.StoredModel(
        name=c.name, repo=c.repo, tag=c.tag, quant=c.quant, revision=c.revision, commit=c.commit,
        files=tuple(store.StoredFile(f.repo_path, f.size, f.digest, f.path, f.blob, f.verified_mtime_ns)
                    for f in pulled.files),
        pulled_at=store.now(), created=tuple(dict.fromkeys((*(previous.created if previous else ()), *pulled.created)))))
    return pulled, record


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


def plan_removal(name: str) -> store.Removal:
    """What `moecli rm NAME` would delete and keep (nothing moecli did not create)."""
    return store.plan_removal(name)


def remove(removal: store.Removal) -> None:
    store.remove(removal)
