"""Every failure of a request to the Hub, its CDN or a mirror, as one line naming the problem and the fix.

The one translator of moecli.hub, used by the listing, the transfer and the remote header reads:

- `raise_for_status(answer)`: an HTTP error answer, whichever client got it (huggingface_hub's
  httpx2 for the listing and the header reads, the standard library for the transfer), is read by
  huggingface_hub's own hf_raise_for_status, so that one answer is one error class everywhere
  (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, ...).
- `translated(asked)`: those, offline mode and the transport's exceptions become one MoecliError.
  What was asked decides the words: a repo's listing or one of its files (`RepoRequest`: a
  HubError naming the repo) or a file read by range requests to plan it (`FileRequest`: a
  ModelFileError naming the URL; a 404 is gguf's SourceNotFound, so a missing shard is named).
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

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

from moecli.errors import DownloadError, HubError, ModelFileError, MoecliError
from moecli.gguf import SourceNotFound
from moecli.hub.env import HubEnv


@dataclass(frozen=True)
class RepoRequest:
    """The Hub's API for a repo, or one of its files to download."""

    env: HubEnv
    repo: str
    revision: str = "main"
    path: str | None = None  # the repo path of the file, when one is fetched


@dataclass(frozen=True)
class FileRequest:
    """A file read by range requests (a GGUF header, to plan a model before it is downloaded)."""

    url: str


Asked = RepoRequest | FileRequest


def raise_for_status(answer: httpx2.Response | urllib.error.HTTPError) -> None:
    """Raise huggingface_hub's error for an HTTP error answer, as it reads its own answers
    (X-Error-Code, status, URL); return for an answer it does not count as an error (a redirect)."""
    from huggingface_hub.utils import hf_raise_for_status

    if isinstance(answer, urllib.error.HTTPError):
        body = answer.read() if answer.fp is not None else b""
        answer = httpx2.Response(answer.code, headers=list(answer.headers.items()), content=body,
                                 request=httpx2.Request("GET", answer.url))
    hf_raise_for_status(answer)


@contextmanager
def translated(asked: Asked) -> Iterator[None]:
    """Turn what `translate` knows into its MoecliError; anything else goes on unchanged."""
    try:
        yield
    except MoecliError:
        raise
    except Exception as exc:
        error = translate(exc, asked)
        if error is None:
            raise
        raise error from None


def translate(exc: BaseException, asked: Asked) -> MoecliError | None:
    """The one line for `exc` raised while asking `asked`; None for an exception that is not
    about the Hub or the network (a bug, or the disk)."""
    if isinstance(asked, FileRequest):
        return _file_error(exc, asked.url)
    return _repo_error(exc, asked)


def gated_without_token(repo: str, env: HubEnv) -> HubError:
    return HubError(f"{repo} is gated: the Hub serves it only to logged-in users who accepted its terms",
                    f"accept them on {env.endpoint}/{repo}, then set HF_TOKEN (or run `hf auth login`)")


def _repo_error(exc: BaseException, asked: RepoRequest) -> MoecliError | None:
    env, repo, revision = asked.env, asked.repo, asked.revision
    page = f"{env.endpoint}/{repo}"
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class
        if env.token is None or _status(exc) == 401:
            return gated_without_token(repo, env)
        return HubError(f"{repo} is gated and your token has not been granted access",
                        f"ask for access on {page}; HF_TOKEN must belong to the account that did")
    if isinstance(exc, RepositoryNotFoundError):
        hint = f"check the name on {env.endpoint}" + ("" if env.token else "; a private repo needs HF_TOKEN")
        return HubError(f"{repo} is not on {env.endpoint} (or is private)", hint)
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo} has no revision {revision!r}",
                        f"name a branch, tag or commit of {page}, or leave out @{revision}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"{repo} has no file {asked.path!r} at {revision}", "the repo changed while pulling; pull again")
    if isinstance(exc, DisabledRepoError):
        return HubError(f"{repo} has been disabled on the Hub", "pick another repo")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"cannot reach {env.endpoint}: HF_HUB_OFFLINE is set",
                        "unset HF_HUB_OFFLINE, or use a model already pulled")
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc) or "an error"
        if status == 401:
            return HubError(f"{env.endpoint} refused the token in HF_TOKEN (401 invalid credentials)",
                            "set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens), or unset it")
        return HubError(f"{env.endpoint} answered {status} for {repo}", "try again later; check HF_ENDPOINT")
    if isinstance(exc, httpx2.TransportError):
        return HubError(f"cannot reach {env.endpoint}: {transport_reason(exc)}",
                        "check the network (or HF_ENDPOINT); pulled models run offline")
    return None


def _file_error(exc: BaseException, url: str) -> MoecliError | None:
    if isinstance(exc, HfHubHTTPError):  # gated, not found, ...: for a file read to plan it, the status says it
        status = _status(exc)
        if status in (401, 403):
            return ModelFileError(f"{url}: access denied (HTTP {status})",
                                  "the repository may be gated or private: accept its terms on the Hub and log in "
                                  "(hf auth login) or set HF_TOKEN")
        if status == 404:
            return SourceNotFound(f"{url} was not found (HTTP 404)", "check the repository, revision and file name")
        reason = exc.response.reason_phrase if exc.response is not None else ""
        return ModelFileError(f"{url}: HTTP {status or 'error'} {reason}".rstrip(), "try again later")
    if isinstance(exc, OfflineModeIsEnabled):
        return ModelFileError(f"cannot read {url}: offline mode is on (HF_HUB_OFFLINE)",
                              "unset HF_HUB_OFFLINE, or plan a local file")
    if isinstance(exc, httpx2.TransportError):
        return ModelFileError(f"cannot reach {urlsplit(url).netloc}: {transport_reason(exc)}",
                              "check the network connection (or HF_ENDPOINT), then try again")
    return None


def _status(exc: HfHubHTTPError) -> int | None:
    return exc.response.status_code if exc.response is not None else None


def transport_reason(exc: BaseException) -> str:
    """One line for a network failure, httpx2's or the standard library's (whose URLError wraps
    the socket's)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return "the host name does not resolve"
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return "timed out"
    return text.splitlines()[0][:120]


def untrusted_certificate(url: str, cause) -> DownloadError:
    """A TLS certificate no trust store vouches for (an ssl.SSLCertVerificationError): trying again will not help."""
    return DownloadError(f"the TLS certificate of {urlsplit(url).hostname} (or of where it redirects) is not "
                         f"trusted: {cause.verify_message}",
                         "behind a TLS-inspecting proxy, set SSL_CERT_FILE to its CA bundle")
