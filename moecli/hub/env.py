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

from moecli import paths
from moecli.errors import BadInput

# huggingface_hub reads these with int() when it is imported (constants.py) and dies with a
# ValueError traceback on anything else: checked first, so that a typo is one line.
_INT_SECONDS = ("HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT")


def check_environ(env: Mapping[str, str] | None = None) -> None:
    """BadInput naming the variable when HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT is not a
    whole number of seconds (what huggingface_hub accepts)."""
    env = os.environ if env is None else env
    for name in _INT_SECONDS:
        value = env.get(name)
        if value is None:
            continue
        try:
            int(value)
        except ValueError:
            raise BadInput(f"{name}={value!r} is not a whole number of seconds",
                           f"set it like {name}=30, or unset it (the default is 10)") from None


check_environ()  # before huggingface_hub is imported (below), which would raise a ValueError

from huggingface_hub import HfApi, constants  # noqa: E402
from huggingface_hub.utils import build_hf_headers  # noqa: E402

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
        check_environ(env)
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        return cls(endpoint=endpoint, cache_dir=paths.hf_hub_cache(),
                   token=_token(env, paths.hf_home()),
                   offline=_truthy(env.get("HF_HUB_OFFLINE")) or _truthy(env.get("TRANSFORMERS_OFFLINE")))

    def llama_cache_conflict(self) -> str | None:
        """llama.cpp's `-hf` looks for its files in LLAMA_CACHE first (common/hf-cache.cpp,
        get_cache_directory: LLAMA_CACHE, then HF_HUB_CACHE, HF_HOME/hub, ...): when it is set to
        another folder than the Hugging Face cache, `llama-server -hf` does not see what moecli pulls.
        The one line that says so, or None."""
        value = os.environ.get("LLAMA_CACHE")
        if not value:
            return None
        llama = Path(os.path.expanduser(value))
        if os.path.realpath(llama) == os.path.realpath(self.cache_dir):
            return None
        return (f"LLAMA_CACHE={value} makes `llama-server -hf` look there, not in the Hugging Face cache "
                f"{self.cache_dir} where moecli and huggingface_hub keep models: unset LLAMA_CACHE, "
                f"or set HF_HUB_CACHE={value} too")

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
