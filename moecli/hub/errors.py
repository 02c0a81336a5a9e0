"""Failures of the Hub, its CDN or a mirror, as one line naming the problem and the fix."""

from __future__ import annotations

from contextlib import contextmanager

import httpx2
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from moecli.errors import HubError
from moecli.hub.env import HubEnv


def gated_without_token(repo: str, env: HubEnv) -> HubError:
    return HubError(f"{repo} is gated: the Hub serves it only to logged-in users who accepted its terms",
                    f"accept them on {env.endpoint}/{repo}, then set HF_TOKEN (or run `hf auth login`)")


@contextmanager
def hub_errors(repo: str, revision: str, env: HubEnv, path: str | None = None):
    """huggingface_hub's and httpx2's exceptions -> one line naming the problem and the fix."""
    page = f"{env.endpoint}/{repo}"
    try:
        yield
    except GatedRepoError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if env.token is None or status == 401:
            raise gated_without_token(repo, env) from None
        raise HubError(f"{repo} is gated and your token has not been granted access",
                       f"ask for access on {page}; HF_TOKEN must belong to the account that did") from None
    except RepositoryNotFoundError:
        hint = f"check the name on {env.endpoint}" + ("" if env.token else "; a private repo needs HF_TOKEN")
        raise HubError(f"{repo} is not on {env.endpoint} (or is private)", hint) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r}",
                       f"name a branch, tag or commit of {page}, or leave out @{revision}") from None
    except RemoteEntryNotFoundError:
        raise HubError(f"{repo} has no file {path!r} at {revision}",
                       "the repo changed while pulling; pull again") from None
    except DisabledRepoError:
        raise HubError(f"{repo} has been disabled on the Hub", "pick another repo") from None
    except OfflineModeIsEnabled:
        raise HubError(f"cannot reach {env.endpoint}: HF_HUB_OFFLINE is set",
                       "unset HF_HUB_OFFLINE, or use a model already pulled") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        if status == 401:
            raise HubError(f"{env.endpoint} refused the token in HF_TOKEN (401 invalid credentials)",
                           "set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens), or unset it") from None
        raise HubError(f"{env.endpoint} answered {status} for {repo}", "try again later; check HF_ENDPOINT") from None
    except httpx2.TransportError as exc:
        raise HubError(f"cannot reach {env.endpoint}: {_transport_reason(exc)}",
                       "check the network (or HF_ENDPOINT); pulled models run offline") from None


def _transport_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return "the host name does not resolve"
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    return text.splitlines()[0][:120]
