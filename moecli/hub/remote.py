"""GGUF files on the Hub read by range requests: a byte source for `moecli.gguf`, so that a
candidate's headers are planned before anything is downloaded.

    remote = remote_gguf(candidate)
    gguf.read_model(remote.open(), open_shard=remote.open)     every shard's header, a few MB

The requests go through huggingface_hub's client (httpx2), which follows redirects (the Hub sends
file downloads to its CDN) and drops the Authorization header on a redirect to another origin
(httpx2's _client.py, _redirect_headers): the token goes to the Hub only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from moecli.hub.env import HubEnv
from moecli.hub.errors import FileRequest, raise_for_status, translated
from moecli.hub.listing import Candidate


class RemoteFile:
    """An http(s) URL read by `Range` requests: a `moecli.gguf.ByteSource`."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        from huggingface_hub import constants

        self.location = url
        self.name = os.path.basename(urlsplit(url).path) or url
        # identity: byte offsets must be those of the file, not of a compressed stream
        self.headers = {**headers, "Accept-Encoding": "identity"}
        self.timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        self.size: int | None = None

    def read(self, offset: int, n: int) -> bytes:
        from huggingface_hub import get_session

        headers = {**self.headers, "Range": f"bytes={offset}-{offset + n - 1}"}
        with translated(FileRequest(self.location)), get_session().stream(
                "GET", self.location, headers=headers, follow_redirects=True, timeout=self.timeout) as response:
            status = response.status_code
            if status == 416:  # the range starts at or past the end of the file
                self.size = _total_from_content_range(response.headers.get("content-range")) or self.size
                return b""
            if status >= 400:
                raise_for_status(response)
            if status == 206:
                self.size = _total_from_content_range(response.headers.get("content-range")) or self.size
                return _read_at_most(response, n)
            # 200: the server ignored Range; read the start of the body only
            length = response.headers.get("content-length")
            if length and length.isdigit():
                self.size = int(length)
            return _read_at_most(response, offset + n)[offset:]


def open_url(url: str, headers: Mapping[str, str] | None = None, env: HubEnv | None = None) -> RemoteFile:
    """Any http(s) URL. headers: sent with every request; by default the Hub's own (its token,
    moecli's user agent) for a URL on the Hub's endpoint (HF_ENDPOINT), none elsewhere."""
    if headers is None:
        env = env or HubEnv.from_environ()
        headers = env.headers() if urlsplit(url).netloc == urlsplit(env.endpoint).netloc else {}
    return RemoteFile(url, headers)


@dataclass(frozen=True)
class RemoteGGUF:
    """A candidate's files on the Hub, for `gguf.read_model(remote.open(), open_shard=remote.open)`."""

    urls: tuple[str, ...]  # first shard first
    headers: dict[str, str] = field(hash=False)

    def open(self, url: str | None = None) -> RemoteFile:
        """The byte source of `url` (by default the first shard), with the Hub's headers."""
        return RemoteFile(url or self.urls[0], self.headers)


def remote_gguf(candidate: Candidate, env: HubEnv | None = None) -> RemoteGGUF:
    env = env or HubEnv.from_environ()
    return RemoteGGUF(candidate.urls, env.headers())


def _read_at_most(response: Any, n: int) -> bytes:
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) >= n:
            break
    return bytes(out[:n])


def _total_from_content_range(value: str | None) -> int | None:
    """`bytes 0-262143/21474836480` or `bytes */21474836480` -> 21474836480."""
    if value and "/" in value:
        total = value.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    return None
