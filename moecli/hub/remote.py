"""A candidate's GGUF files on the Hub, readable by range requests: its headers are planned
before anything is downloaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from moecli.hub.env import HubEnv
from moecli.hub.listing import Candidate


@dataclass(frozen=True)
class RemoteGGUF:
    """What `gguf.read_model(url, headers=...)` needs to read a candidate's headers by range requests."""

    urls: tuple[str, ...]  # first shard first
    headers: dict[str, str] = field(hash=False)


def remote_gguf(candidate: Candidate, env: HubEnv | None = None) -> RemoteGGUF:
    env = env or HubEnv.from_environ()
    return RemoteGGUF(candidate.urls, env.headers())
