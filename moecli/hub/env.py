"""The Hub's environment, read when used: endpoint, cache folder, token, offline mode.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE once, at import.
moecli reads them at each call and hands them to huggingface_hub explicitly, so that what the
environment says now is what is used (and tests can point each test at its own hub and cache).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.utils import build_hf_headers

DEFAULT_ENDPOINT = "https://huggingface.co"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubEnv:
    endpoint: str
    cache_dir: Path  # the hub cache: models--org--name/{blobs,snapshots,refs}
    token: str | None
    offline: bool

    @classmethod
    def from_environ(cls) -> HubEnv:
        env = os.environ
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        hf_home = Path(os.path.expandvars(os.path.expanduser(
            env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))))
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
        return cls(endpoint=endpoint, cache_dir=Path(os.path.expandvars(os.path.expanduser(cache))),
                   token=_token(env, hf_home),
                   offline=_truthy(env.get("HF_HUB_OFFLINE")) or _truthy(env.get("TRANSFORMERS_OFFLINE")))

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def headers(self) -> dict[str, str]:
        """What to send to the Hub: the user agent, and the token when there is one."""
        return build_hf_headers(token=self.token or False, library_name="moecli")


def _token(env: Mapping[str, str], hf_home: Path) -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved. huggingface_hub's get_token() knows more
    (OAuth refresh, Colab) but reads the token file of the HF_HOME it was imported with."""
    token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if token:
        return token
    token_path = Path(os.path.expanduser(env.get("HF_TOKEN_PATH") or str(hf_home / "token")))
    if token_path == Path(constants.HF_TOKEN_PATH):
        from huggingface_hub import get_token

        return get_token()
    try:
        return token_path.read_text().strip() or None
    except OSError:
        return None


@contextmanager
def quiet_hub():
    """huggingface_hub's retry chatter, warnings and progress bars are not for our user: moecli
    reports progress itself and turns failures into one line."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    disable_progress_bars()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"huggingface_hub(\..*)?")
        yield
