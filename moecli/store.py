"""The local model store: which models were pulled, where their files are, and removing them.

A record per model (JSON under `paths.data_dir()/store/<cache key>/`, one folder per Hugging Face
cache: with HF_HOME pointed elsewhere, the records of the other cache are not this one's, and `rm`
never touches files in it) points into the Hugging Face cache, where
the files are (blobs/ + snapshots/ symlinks, shared with huggingface_hub and `llama-server -hf`):
nothing is copied. A record remembers which blobs and links moecli itself created, because
`remove` deletes only those: a file that was in the cache before (downloaded by `hf`, by
llama.cpp, or by another moecli record) is never deleted.

The ledger (`created/<name>.json`) is written before each file moecli makes exists (a partial
download before its first byte): a pull that stops part-way is listed with its progress
(`partial_pulls`) and removable, and a record that cannot be read is listed as damaged
(`damaged_records`), not dropped.
"""

from __future__ import annotations

import errno
import hashlib
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
_PARTIAL = ".downloadInProgress"  # a partial download's suffix (moecli.hub.cache.PARTIAL_SUFFIX)


@dataclass(frozen=True)
class StoredFile:
    repo_path: str  # the file's path in the repo
    size: int
    digest: str  # the LFS sha256 (or the git blob id of a small non-LFS file)
    path: Path  # the snapshot path: what llama.cpp, huggingface_hub and moecli open
    blob: Path  # the bytes in the cache's blobs/
    verified_mtime_ns: int = 0  # the blob's mtime when its digest was last checked
    verified_at: datetime | None = None  # when its bytes were last hashed (None: not known)


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

    model: StoredModel | None  # None: an interrupted pull, or a damaged record
    delete: tuple[Path, ...]  # links and blobs moecli created and nothing else uses
    keep: tuple[tuple[Path, str], ...] = field(default=())  # (path, why it stays)
    freed: int = 0  # bytes of the blobs (and partial files) deleted
    name: str = ""  # what is removed: the model's name
    record: Path | None = None  # a damaged record's file, deleted too

    def __post_init__(self) -> None:
        if not self.name and self.model is not None:
            object.__setattr__(self, "name", self.model.name)


@dataclass(frozen=True)
class PartialPull:
    """A pull that began (moecli noted the files it was making) and never finished."""

    name: str
    size: int | None  # bytes of the whole model (None: not known, an older ledger)
    have: int  # bytes on disk: finished blobs and partial files
    created: tuple[Path, ...]

    @property
    def progress(self) -> str:
        """"1.2 MiB of 3.0 MiB, 40%" (or the bytes alone, when the size is not known)."""
        return _progress(self)


@dataclass(frozen=True)
class Damaged:
    """A record that cannot be read."""

    path: Path  # the record's file
    name: str  # the model's name where the file still says it, else the file's stem
    why: str


def _cache_key(cache: Path) -> str:
    """One folder of records per Hugging Face cache: its name and a hash of its absolute path."""
    absolute = os.path.abspath(cache)
    return f"{_slug(Path(absolute).parent.name or 'root')}-{hashlib.sha256(absolute.encode()).hexdigest()[:12]}"


def store_dir() -> Path:
    """The records of the Hugging Face cache in use now (HF_HUB_CACHE / HF_HOME)."""
    return paths.data_dir() / "store" / _cache_key(paths.hf_hub_cache())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name.lower()).strip("-")


def _record_path(name: str) -> Path:
    return store_dir() / f"{_slug(name)}.json"


def _ledger_path(name: str) -> Path:
    return store_dir() / "created" / f"{_slug(name)}.json"


def note_created(name: str, created: Iterable[Path], *, size: int | None = None) -> None:
    """Remember at once that moecli created (is about to create) these partial files, blobs and
    links for `name`, so that a pull which fails later (a full disk, a bad shard, Ctrl-C) does not
    leave files `remove` would treat as someone else's. `size`: the whole model's bytes, for the
    progress of an interrupted pull. Raises StoreError when the moecli home cannot be written."""
    new = [str(p) for p in created]
    data = _read_ledger_data(name)
    if not new and (size is None or data.get("size") == size):
        return
    data["name"] = name
    if size is not None:
        data["size"] = size
    data["created"] = list(dict.fromkeys([*data.get("created", []), *new]))
    _write_atomic(_ledger_path(name), json.dumps(data))


def _read_ledger_data(name: str, path: Path | None = None) -> dict:
    try:
        data = json.loads((path or _ledger_path(name)).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    if isinstance(data, list):  # moecli 0.x: the list of paths alone
        data = {"created": data}
    if not isinstance(data, dict) or not all(isinstance(p, str) for p in data.get("created", [])):
        return {}
    return data


def _read_ledger(name: str) -> list[Path]:
    return [Path(p) for p in _read_ledger_data(name).get("created", [])]


# -- (de)serialisation ----------------------------------------------------------------------------
def _to_json(model: StoredModel) -> dict:
    return {
        "format": _FORMAT, "name": model.name, "repo": model.repo, "tag": model.tag, "quant": model.quant,
        "revision": model.revision, "commit": model.commit, "pulled_at": model.pulled_at.isoformat(),
        "files": [{"repo_path": f.repo_path, "size": f.size, "digest": f.digest, "path": str(f.path),
                   "blob": str(f.blob), "verified_mtime_ns": f.verified_mtime_ns,
                   "verified_at": f.verified_at.isoformat() if f.verified_at else None} for f in model.files],
        "created": [str(p) for p in model.created],
    }


def _from_json(data: dict) -> StoredModel:
    return StoredModel(
        name=data["name"], repo=data["repo"], tag=data["tag"], quant=data["quant"], revision=data["revision"],
        commit=data["commit"], pulled_at=datetime.fromisoformat(data["pulled_at"]),
        files=tuple(StoredFile(f["repo_path"], f["size"], f["digest"], Path(f["path"]), Path(f["blob"]),
                               f.get("verified_mtime_ns", 0),
                               datetime.fromisoformat(f["verified_at"]) if f.get("verified_at") else None)
                    for f in data["files"]),
        created=tuple(Path(p) for p in data.get("created", ())),
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise home_error(exc, path) from exc


def home_error(exc: OSError, path: Path) -> StoreError:
    """One line for a moecli home that cannot be written (full, read-only, a file, not ours)."""
    where = f"MOECLI_HOME ({paths.home()})" if paths.home() else f"moecli's data folder ({paths.data_dir()})"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        fix = f"free some space on the disk of {where}, or point MOECLI_HOME at a disk with room"
    else:
        fix = f"make {where} a writable folder, or point MOECLI_HOME at one"
    return StoreError(f"cannot write moecli's record {path}: {reason}", fix)


# -- reading --------------------------------------------------------------------------------------
def _legacy_dir() -> Path:
    """Where records were kept before they were kept per cache (one folder for every cache)."""
    return paths.data_dir() / "store"


def _in_this_cache(model: StoredModel) -> bool:
    cache = os.path.abspath(paths.hf_hub_cache()) + os.sep
    return bool(model.files) and all(os.path.abspath(f.blob).startswith(cache) for f in model.files)


def _read_legacy() -> list[tuple[Path, StoredModel]]:
    """The older flat records whose files are in the cache in use now (written again per cache by `add`)."""
    found = []
    try:
        files = sorted(_legacy_dir().glob("*.json")) if _legacy_dir().is_dir() else []
    except OSError:
        return []
    for path in files:
        try:
            model = _from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not this cache's to call damaged: it cannot say which cache it belongs to
        if _in_this_cache(model):
            found.append((path, model))
    return found


def _legacy_of(name: str) -> tuple[Path, StoredModel] | None:
    path = _legacy_dir() / _record_path(name).name
    return next(((p, m) for p, m in _read_legacy() if p == path), None)


def _read_records() -> tuple[list[tuple[Path, StoredModel]], list[Damaged]]:
    folder = store_dir()
    models: list[tuple[Path, StoredModel]] = []
    damaged: list[Damaged] = []
    try:
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    except OSError:
        files = []
    names = {p.stem for p in files}
    models += [(p, m) for p, m in _read_legacy() if p.stem not in names]
    for path in files:
        try:
            text = path.read_text()
        except OSError as exc:
            damaged.append(Damaged(path, path.stem, f"cannot be read: {exc.strerror or exc}"))
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            damaged.append(Damaged(path, path.stem, f"is not valid JSON ({exc.msg} at line {exc.lineno})"))
            continue
        try:
            models.append((path, _from_json(data)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            name = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else path.stem
            why = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else f"holds a bad value ({exc})"
            damaged.append(Damaged(path, name, why))
    return models, damaged


def list_models() -> tuple[StoredModel, ...]:
    """Every readable record, sorted by name (the others: `damaged_records`)."""
    models = [m for _, m in _read_records()[0]]
    return tuple(sorted(models, key=lambda m: m.name.lower()))


def damaged_records() -> tuple[Damaged, ...]:
    """The records that cannot be read: `moecli list` shows them, `moecli rm NAME` forgets one."""
    return tuple(_read_records()[1])


def partial_pulls() -> tuple[PartialPull, ...]:
    """Pulls that noted files and never wrote their record: interrupted (Ctrl-C, a kill, a full
    disk, a failed check). `have`: what is on disk of them so far."""
    folder = store_dir() / "created"
    try:
        ledgers = sorted(folder.glob("*.json")) if folder.is_dir() else []
    except OSError:
        return ()
    recorded = {_slug(m.name) for m in list_models()} | {_slug(d.name) for d in damaged_records()} \
        | {d.path.stem for d in damaged_records()}
    out = []
    for ledger in ledgers:
        if ledger.stem in recorded:
            continue
        data = _read_ledger_data("", ledger)
        created = tuple(Path(p) for p in data.get("created", []))
        if not created:
            continue
        have = 0
        for p in created:
            if p.name.endswith(_PARTIAL) or _is_blob(p):
                try:
                    have += p.stat().st_size if not p.is_symlink() else 0
                except OSError:
                    pass
        size = data.get("size") if isinstance(data.get("size"), int) else None
        out.append(PartialPull(data.get("name") if isinstance(data.get("name"), str) else ledger.stem,
                               size, have, created))
    return tuple(sorted(out, key=lambda p: p.name.lower()))


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
    for d in damaged_records():
        if wanted in (d.name.lower(), d.path.stem.lower()):
            raise StoreError(f"the record of {d.name} ({d.path}) {d.why}",
                             f"`moecli pull {d.name}` writes it again, or `moecli rm {d.name}` forgets it")
    for p in partial_pulls():
        if p.name.lower() == wanted:
            raise StoreError(f"{p.name} was not pulled completely (its pull stopped at {_progress(p)})",
                             f"`moecli pull {p.name}` resumes it; `moecli rm {p.name}` deletes what it downloaded")
    known = ", ".join(m.name for m in models) or "none yet"
    raise StoreError(f"no pulled model is named {name!r} (pulled: {known})",
                     f"`moecli pull {name}` fetches it; `moecli list` shows what is pulled")


def _progress(p: PartialPull) -> str:
    from moecli.units import fmt_bytes

    if p.size:
        return f"{fmt_bytes(p.have)} of {fmt_bytes(p.size)}, {100 * p.have // p.size}%"
    return fmt_bytes(p.have)


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
        old = _from_json(json.loads(_record_path(model.name).read_text())) if _record_path(model.name).exists() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old = None
    earlier = (*old.created,) if old is not None else ()
    created = tuple(dict.fromkeys((*earlier, *_read_ledger(model.name), *model.created)))
    legacy = _legacy_of(model.name)
    if old is None and legacy is not None:  # a record from before records were kept per cache
        created = tuple(dict.fromkeys((*legacy[1].created, *created)))
    model = replace(model, created=created)
    _write_atomic(_record_path(model.name), json.dumps(_to_json(model), indent=1))
    if legacy is not None:
        legacy[0].unlink(missing_ok=True)
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
    """What removing `name` deletes and keeps; nothing is touched yet. `name` may be a pulled
    model, an interrupted pull (its partial files) or a damaged record (forgotten; the files its
    ledger says moecli made are deleted where nothing else uses them)."""
    try:
        model = get(name)
    except StoreError:
        wanted = name.strip().lower()
        for p in partial_pulls():
            if p.name.lower() == wanted:
                return _removal_of(p.name, None, p.created)
        for d in damaged_records():
            if wanted in (d.name.lower(), d.path.stem.lower()):
                ledger = _read_ledger_data("", _ledger_path(d.name)) or _read_ledger_data("", store_dir() / "created" / d.path.name)
                return replace(_removal_of(d.name, None, tuple(Path(c) for c in ledger.get("created", []))), record=d.path)
        raise
    model = replace(model, created=tuple(dict.fromkeys((*model.created, *_read_ledger(model.name)))))
    return _removal_of(model.name, model, model.created)


def _removal_of(name: str, model: StoredModel | None, created_paths: tuple[Path, ...]) -> Removal:
    others = [m for m in list_models() if m.name != name]
    used_by_others = {p: m.name for m in others for f in m.files for p in (f.path, f.blob)}
    made_for_others = {p: m.name for m in others for p in m.created}
    created = set(created_paths)
    delete: list[Path] = []
    keep: list[tuple[Path, str]] = []
    for f in (model.files if model else ()):
        for p in (f.path, f.blob):
            if p not in created and os.path.lexists(p) and p not in (k for k, _ in keep):
                if p in used_by_others:
                    why = f"{used_by_others[p]} uses it"
                elif p in made_for_others:
                    why = f"moecli pulled it for {made_for_others[p]}"
                else:
                    why = "was in the Hugging Face cache before moecli pulled it"
                keep.append((p, why))
    ordered = list(dict.fromkeys(created_paths))
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
    return Removal(model, tuple(delete), tuple(keep), freed, name=name)


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
    legacy = _legacy_of(removal.name)
    for path in (removal.record, _record_path(removal.name), _ledger_path(removal.name), legacy and legacy[0]):
        if path is None:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise home_error(exc, path) from exc


def _prune_empty_dirs(folder: Path) -> None:
    """Remove empty folders of a snapshot, up to (not including) the repo's snapshots/ folder."""
    while "snapshots" in folder.parts[:-1]:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
