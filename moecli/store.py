"""The local model store: which models were pulled, where their files are, and removing them.

A record per model (JSON under `paths.data_dir()/store/`) points into the Hugging Face cache, where
the files are (blobs/ + snapshots/ symlinks, shared with huggingface_hub and `llama-server -hf`):
nothing is copied. A record remembers which blobs and links moecli itself created, because
`remove` deletes only those: a file that was in the cache before (downloaded by `hf`, by
llama.cpp, or by another moecli record) is never deleted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from moecli import paths
from moecli.errors import StoreError

_FORMAT = 1


@dataclass(frozen=True)
class StoredFile:
    repo_path: str  # the file's path in the repo
    size: int
    digest: str  # the LFS sha256 (or the git blob id of a small non-LFS file)
    path: Path  # the snapshot path: what llama.cpp, huggingface_hub and moecli open
    blob: Path  # the bytes in the cache's blobs/
    verified_mtime_ns: int = 0  # the blob's mtime when its digest was last checked


@dataclass(frozen=True)
class StoredModel:
    name: str  # "org/repo:TAG"
    repo: str
    tag: str  # what names this model in its repo: the quant, or the file stem when quants repeat
    quant: str
    revision: str  # what was asked: a branch, a tag or a commit
    commit: str
    files: tuple[StoredFile, ...]  # shards in order
    pulled_at: datetime
    created: tuple[Path, ...] = ()  # blobs and links moecli created for this model, over all its pulls

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def path(self) -> Path:
        """The first shard: the file llama.cpp is given."""
        return self.files[0].path

    @property
    def present(self) -> bool:
        """Every file is still there (someone may have cleaned the Hugging Face cache)."""
        return all(f.path.exists() for f in self.files)


@dataclass(frozen=True)
class Removal:
    """What `remove` would do: shown to the user before they confirm."""

    model: StoredModel
    delete: tuple[Path, ...]  # links and blobs moecli created and nothing else uses
    keep: tuple[tuple[Path, str], ...] = field(default=())  # (path, why it stays)
    freed: int = 0  # bytes of the blobs deleted


def store_dir() -> Path:
    return paths.data_dir() / "store"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name.lower()).strip("-")


def _record_path(name: str) -> Path:
    return store_dir() / f"{_slug(name)}.json"


def _ledger_path(name: str) -> Path:
    return store_dir() / "created" / f"{_slug(name)}.json"


def note_created(name: str, created: Iterable[Path]) -> None:
    """Remember at once that moecli created these blobs/links for `name`, so that a pull which
    fails later (a bad shard, Ctrl-C) does not leave files `remove` would treat as someone else's."""
    new = [str(p) for p in created]
    if not new:
        return
    ledger = _ledger_path(name)
    known = _read_ledger(name)
    _write_atomic(ledger, json.dumps(list(dict.fromkeys([*map(str, known), *new]))))


def _read_ledger(name: str) -> list[Path]:
    try:
        return [Path(p) for p in json.loads(_ledger_path(name).read_text())]
    except (OSError, ValueError, TypeError):
        return []


# -- (de)serialisation ----------------------------------------------------------------------------
def _to_json(model: StoredModel) -> dict:
    return {
        "format": _FORMAT, "name": model.name, "repo": model.repo, "tag": model.tag, "quant": model.quant,
        "revision": model.revision, "commit": model.commit, "pulled_at": model.pulled_at.isoformat(),
        "files": [{"repo_path": f.repo_path, "size": f.size, "digest": f.digest, "path": str(f.path),
                   "blob": str(f.blob), "verified_mtime_ns": f.verified_mtime_ns} for f in model.files],
        "created": [str(p) for p in model.created],
    }


def _from_json(data: dict) -> StoredModel:
    return StoredModel(
        name=data["name"], repo=data["repo"], tag=data["tag"], quant=data["quant"], revision=data["revision"],
        commit=data["commit"], pulled_at=datetime.fromisoformat(data["pulled_at"]),
        files=tuple(StoredFile(f["repo_path"], f["size"], f["digest"], Path(f["path"]), Path(f["blob"]),
                               f.get("verified_mtime_ns", 0)) for f in data["files"]),
        created=tuple(Path(p) for p in data.get("created", ())),
    )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- reading --------------------------------------------------------------------------------------
def list_models() -> tuple[StoredModel, ...]:
    """Every record, sorted by name. A record that cannot be read is skipped, not fatal."""
    folder = store_dir()
    if not folder.is_dir():
        return ()
    models = []
    for path in sorted(folder.glob("*.json")):
        try:
            models.append(_from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return tuple(sorted(models, key=lambda m: m.name.lower()))


def find(repo: str, tag: str | None = None) -> StoredModel | None:
    """The record of `repo` (with `tag`, case-insensitive), or None. Without a tag: the only one."""
    matches = [m for m in list_models() if m.repo.lower() == repo.lower()
               and (tag is None or tag.upper() in (m.tag.upper(), m.quant.upper()))]
    if tag is not None:
        exact = [m for m in matches if m.tag.upper() == tag.upper()]
        matches = exact or matches
    return matches[0] if len(matches) == 1 else None


def get(name: str) -> StoredModel:
    """A record by its name (`org/repo:TAG`, any case), by `org/repo` or `repo:TAG` when that is
    unambiguous. Raises StoreError naming what is there."""
    models = list_models()
    wanted = name.strip().lower()
    if wanted.startswith(("hf.co/", "huggingface.co/")):
        wanted = wanted.split("/", 1)[1]
    for match in (
        lambda m: m.name.lower() == wanted,
        lambda m: m.repo.lower() == wanted,
        lambda m: m.name.lower().split("/", 1)[-1] == wanted,
        lambda m: m.repo.lower().split("/", 1)[-1] == wanted,
    ):
        found = [m for m in models if match(m)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise StoreError(f"{name!r} names {len(found)} pulled models: {', '.join(m.name for m in found)}",
                             "use the full name shown by `moecli list`")
    known = ", ".join(m.name for m in models) or "none yet"
    raise StoreError(f"no pulled model is named {name!r} (pulled: {known})",
                     f"`moecli pull {name}` fetches it; `moecli list` shows what is pulled")


def resolve(name: str) -> tuple[Path, ...]:
    """The files of a pulled model, first shard first: what run/plan/bench open."""
    model = get(name)
    missing = [f.path for f in model.files if not f.path.exists()]
    if missing:
        raise StoreError(f"{model.name} was pulled, but {missing[0]} is gone from the Hugging Face cache",
                         f"`moecli pull {model.name}` fetches it again")
    return model.paths


# -- writing --------------------------------------------------------------------------------------
def add(model: StoredModel) -> StoredModel:
    """Record a pulled model (replacing an older record of the same name, keeping what moecli
    created for it before so that `remove` can still clean that up)."""
    try:
        old = get(model.name) if _record_path(model.name).exists() else None
    except StoreError:
        old = None
    earlier = (*old.created,) if old is not None else ()
    created = tuple(dict.fromkeys((*earlier, *_read_ledger(model.name), *model.created)))
    model = replace(model, created=created)
    _write_atomic(_record_path(model.name), json.dumps(_to_json(model), indent=1))
    return model


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# -- removing -------------------------------------------------------------------------------------
def _links_to(blob: Path, roots: Iterable[Path], skip: set[Path]) -> list[Path]:
    """Symlinks under `roots` (other than `skip`) that resolve to `blob`."""
    target = blob.resolve()
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                link = Path(dirpath) / name
                if link in skip or not link.is_symlink():
                    continue
                try:
                    if link.resolve() == target:
                        found.append(link)
                except OSError:
                    continue
    return found


def _is_blob(path: Path) -> bool:
    """<cache>/models--org--name/blobs/<digest> (a snapshot path can contain a folder named blobs)."""
    return path.parent.name == "blobs" and path.parent.parent.name.startswith("models--")


def plan_removal(name: str) -> Removal:
    """What removing `name` deletes and keeps; nothing is touched yet."""
    model = get(name)
    used_by_others = {p: m.name for m in list_models() if m.name != model.name
                      for f in m.files for p in (f.path, f.blob)}
    model = replace(model, created=tuple(dict.fromkeys((*model.created, *_read_ledger(model.name)))))
    created = set(model.created)
    delete: list[Path] = []
    keep: list[tuple[Path, str]] = []
    for f in model.files:
        for p in (f.path, f.blob):
            if p not in created and os.path.lexists(p) and p not in (k for k, _ in keep):
                keep.append((p, "was in the Hugging Face cache before moecli pulled it"))
    ordered = list(dict.fromkeys(model.created))
    for link in (p for p in ordered if not _is_blob(p)):
        if not os.path.lexists(link):
            continue
        if not link.is_symlink():
            keep.append((link, "is no longer the link moecli made"))
        elif link in used_by_others:
            keep.append((link, f"{used_by_others[link]} uses it"))
        else:
            delete.append(link)
    freed = 0
    for blob in (p for p in ordered if _is_blob(p)):
        if not blob.exists():
            continue
        if blob in used_by_others:
            keep.append((blob, f"{used_by_others[blob]} uses it"))
            continue
        users = _links_to(blob, [blob.parent.parent / "snapshots"], skip=set(delete))
        if users:
            keep.append((blob, f"{users[0]} still links to it"))
            continue
        delete.append(blob)
        freed += blob.stat().st_size
    return Removal(model, tuple(delete), tuple(keep), freed)


def remove(removal: Removal) -> None:
    """Delete what `plan_removal` listed, then the record. Empty snapshot folders go too."""
    for path in removal.delete:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror or exc}",
                             "check its permissions, then run `moecli rm` again") from exc
        _prune_empty_dirs(path.parent)
    _record_path(removal.model.name).unlink(missing_ok=True)
    _ledger_path(removal.model.name).unlink(missing_ok=True)


def _prune_empty_dirs(folder: Path) -> None:
    """Remove empty folders of a snapshot, up to (not including) the repo's snapshots/ folder."""
    while "snapshots" in folder.parts[:-1]:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
