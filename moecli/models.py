"""Where a model name points — `demo`, a local GGUF, a pulled model, or a Hub repo not pulled yet —
and what the planner says of it on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import gguf, planner, store
from moecli.errors import BadInput, DoesNotFit, ModelFileError, MoecliError, StoreError
from moecli.facts import MachineFacts, ModelFacts

if TYPE_CHECKING:  # hub brings huggingface_hub (a third of a second): imported only for Hub names
    from moecli import hub

DEMO = "demo"


@dataclass(frozen=True)
class Located:
    name: str  # what the user typed
    files: tuple[Path, ...] | None  # local files, first shard first; None when only on the Hub
    remote: hub.RemoteGGUF | None = None  # the Hub's copy, readable by range requests
    remote_name: str | None = None  # org/repo:TAG of the remote copy

    @property
    def path(self) -> Path:
        assert self.files, "a remote model has no local path"
        return self.files[0]


def looks_like_path(text: str) -> bool:
    return text.lower().endswith(".gguf") or text.startswith((".", "/", "~")) or Path(text).expanduser().exists()


def local_shards(path: Path) -> tuple[Path, ...]:
    """A local GGUF and, when it is one shard of a split model, all its shards (first first: llama.cpp
    loads a split model from its first file and finds the others by name)."""
    path = path.expanduser()
    if path.is_dir():
        raise BadInput(f"{path} is a folder", "name the .gguf file (the first shard of a split model)")
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist", "check the path, or pull the model: moecli pull org/repo:QUANT")
    prefix, _, count = gguf.split_info(str(path))
    if count == 1:
        return (path,)
    shards = tuple(Path(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1))
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise ModelFileError(f"{path.name} is one of {count} shards, but {missing[0].name} is missing",
                             "put every shard in the same folder (llama.cpp finds them by name)")
    return shards


def locate(name: str, *, remote_ok: bool = False, machine: MachineFacts | None = None) -> Located:
    """Local first (the demo model, a path, a pulled model's name, a pulled repo or alias); else,
    where `remote_ok`, the Hub file that `moecli pull NAME` would fetch (read by range requests:
    nothing is downloaded)."""
    if name == DEMO:
        from moecli import synth

        return Located(name, (synth.ensure_demo_model(),))
    if looks_like_path(name):
        return Located(name, local_shards(Path(name)))
    try:
        return Located(name, store.resolve(name))
    except StoreError:
        pass
    from moecli import hub

    ref = hub.parse_ref(name)
    record = store.find(ref.repo, ref.quant or (ref.alias.quant if ref.alias else None))
    if record is not None and record.present:
        return Located(name, record.paths)
    if not remote_ok:
        raise StoreError(f"{name} is not pulled yet", f"pull it first: moecli pull {name}")
    env = hub.HubEnv.from_environ()
    listing = hub.list_repo(ref, env)
    if listing.gated and not env.token:  # its files answer 401: say why, as `moecli pull` does
        raise hub.gated_without_token(ref.repo, env)
    choice = hub.choose(listing, ref, fits_on(machine) if machine is not None else None)
    return Located(name, None, hub.remote_gguf(choice.candidate), choice.candidate.name)


def read_facts(located: Located) -> ModelFacts:
    if located.files:
        return gguf.read_model(located.files[0], source=located.name)
    assert located.remote is not None
    return gguf.read_model(located.remote.urls[0], headers=located.remote.headers,
                           source=located.remote_name or located.name)


def fits_on(machine: MachineFacts) -> hub.Fits:
    """The planner's verdict on a Hub candidate, from its remote header: does it fit this
    machine's VRAM + RAM with a useful context (llama.cpp's fitter keeps at least 4096)?"""
    from moecli import hub

    def fits(candidate: hub.Candidate) -> tuple[bool, str]:
        remote = hub.remote_gguf(candidate)
        try:
            facts = gguf.read_model(remote.urls[0], headers=remote.headers, source=candidate.name)
            plan = planner.plan(facts, machine, planner.Wishes(n_ctx=planner.DEFAULT_CTX))
        except DoesNotFit as exc:
            return False, exc.message
        except MoecliError as exc:
            return False, f"cannot plan it: {exc.message}"
        return fits_verdict(plan)

    return fits


def fits_verdict(plan: planner.Plan) -> tuple[bool, str]:
    """One line for people: fits or not, and the figure that decides it."""
    if not plan.fits:
        over = [d for d in plan.devices if not d.fits]
        return False, "; ".join(f"needs {_gib(d.total)} on {d.device}, has {_gib(d.budget or 0)}" for d in over) or "does not fit"
    gpu = plan.gpu
    where = f"{_gib(gpu.total)} of {_gib(gpu.budget or 0)} VRAM, " if gpu else ""
    return True, f"{where}{_gib(plan.cpu.total)} of RAM at {plan.params.n_ctx} tokens of context"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
