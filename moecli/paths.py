"""Every directory moecli reads or writes, in one place (XDG via platformdirs; `MOECLI_HOME` moves them all)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "moecli"


def home() -> Path | None:
    value = os.environ.get("MOECLI_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """The store's records and models moecli makes itself (the demo model)."""
    root = home()
    return root / "data" if root else Path(platformdirs.user_data_dir(APP))


def cache_dir() -> Path:
    """Files that can be made again (the measured RAM bandwidth, ...). Partial downloads are not
    here: they sit beside their final place in the Hugging Face cache, so finishing one is a rename."""
    root = home()
    return root / "cache" if root else Path(platformdirs.user_cache_dir(APP))


def config_dir() -> Path:
    """The user's own aliases and machine profiles, beside the ones we ship."""
    root = home()
    return root / "config" if root else Path(platformdirs.user_config_dir(APP))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it now: HF_HUB_CACHE (or the older
    HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub. moecli's records are kept per cache (moecli.store)."""
    env = os.environ
    hf_home = Path(os.path.expandvars(os.path.expanduser(
        env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))))
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hf_home() -> Path:
    env = os.environ
    return Path(os.path.expandvars(os.path.expanduser(
        env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))))


def measurements_file() -> Path:
    """What `bench` measured on this machine (moecli.measurements): the plan's calibration."""
    return data_dir() / "measurements.json"


def models_dir() -> Path:
    return data_dir() / "models"


def shipped_configs_dir() -> Path:
    """`configs/` of the repository: inside the package when installed, beside it in a checkout."""
    inside = Path(__file__).parent / "configs"
    return inside if inside.is_dir() else Path(__file__).parent.parent / "configs"
