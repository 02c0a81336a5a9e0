"""Where a model name points: `demo`, a local GGUF (any shard of a split one), a pulled model, or
a Hub repo not pulled yet (read by range requests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moecli import gguf, store
from moecli.errors import BadInput, ModelFileError, StoreError
from moecli.facts import ModelFacts

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
    if path.exists() and not path.is_file():
        raise ModelFileError(f"{path} is {gguf.not_regular(path)}, not a regular file", "name a .gguf file")
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


def locate(name: str, *, remote_ok: bool = False, fits: hub.Fits | None = None) -> Located:
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
    choice = hub.choose(listing, ref, fits)
    return Located(name, None, hub.remote_gguf(choice.candidate), choice.candidate.name)


def read_facts(located: Located) -> ModelFacts:
    if located.files:
        return gguf.read_model(located.files[0], source=located.name)
    assert located.remote is not None
    return gguf.read_model(located.remote.open(), open_shard=located.remote.open,
                           source=located.remote_name or located.name)
