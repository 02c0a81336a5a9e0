"""The models a user has: pulling one (with the plan shown before a byte is downloaded), the
pulled ones with whether each fits this machine, and removing one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moecli import gguf, planner, store
from moecli.errors import BadInput, MoecliError
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
    from moecli import hub

    if looks_like_path(name):
        raise BadInput(f"{name} is a local file: there is nothing to pull", f"use it directly: moecli run {name}")
    fits = HubFits(machine_facts)

    def on_choice(choice: hub.Choice) -> None:
        try:
            the_plan = fits.plan(choice.candidate)
            pre = PrePlan(choice, the_plan, verdict(the_plan))
        except MoecliError as exc:
            pre = PrePlan(choice, None, None, exc.message)
        if before_download:
            before_download(pre)

    return hub.pull(name, fits=fits, on_choice=on_choice, on_progress=on_progress,
                    check_model=lambda paths: gguf.read_model(paths[0]))


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
