"""What the user typed: `org/repo[:QUANT][@revision]`, a Hub URL, or an alias from
configs/aliases.toml (and the user's own aliases.toml on top)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from moecli import paths
from moecli.errors import BadInput


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    quant: str | None  # pulled when the user names no quant and it fits (see listing.choose)


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
    # huggingface_hub's validate_repo_id (utils/_validators.py): no "--" or "..", 96 characters a part
    if not _REPO_ID.match(name) or "--" in name or ".." in name or len(name) > 96 * 2:
        raise BadInput(f"{name!r} is not a valid Hub repo id", "write it as org/name, e.g. unsloth/Qwen3.6-35B-A3B-GGUF")
    return ModelRef(name, quant, revision or "main")
