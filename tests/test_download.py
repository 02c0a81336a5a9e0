"""moecli.hub.transfer.fetch: the resumable, hashed transfer of one file, against tests/hubserver.py."""

from __future__ import annotations

import hashlib
import re
import socket

import pytest
from hubserver import GATED_REPO, GRANTED_TOKEN, LOCALHOST_TLS, SHARDS, TINY_REPO, HubServer, git_blob_id
from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

from moecli.errors import DownloadError
from moecli.hub import transfer
from moecli.hub.cache import PARTIAL_SUFFIX
from moecli.hub.transfer import Digest, TransferOptions, fetch, hash_file

FAST = TransferOptions(backoff=0.0)


def url_of(hub, path: str) -> str:
    return f"{hub.url}/{TINY_REPO}/resolve/main/{path}"


def target(hub, path: str):
    return hub.repos[TINY_REPO].files[path]


def run(hub, path, partial, options=FAST, **kw):
    """fetch() one file of the tiny repo; returns the byte counts reported to each callback."""
    seen = {"bytes": 0, "rehash": 0, "restart": 0}
    served = target(hub, path)
    digest = Digest("sha256", served.sha256) if served.lfs else Digest("git-sha1", served.oid)
    fetch(url_of(hub, path), partial, label=path, size=served.size, digest=digest, headers={},
          on_bytes=lambda n: seen.__setitem__("bytes", seen["bytes"] + n),
          on_rehash=lambda n: seen.__setitem__("rehash", seen["rehash"] + n),
          on_restart=lambda n: seen.__setitem__("restart", seen["restart"] + n), options=options, **kw)
    return seen


def test_fetch_writes_and_verifies_a_whole_file(hub, tmp_path):
    partial = tmp_path / ("blob" + PARTIAL_SUFFIX)
    seen = run(hub, SHARDS[0], partial)
    assert partial.read_bytes() == target(hub, SHARDS[0]).read_all()
    assert seen == {"bytes": target(hub, SHARDS[0]).size, "rehash": 0, "restart": 0}


def test_fetch_resumes_a_partial_file_from_an_earlier_run(hub, tmp_path):
    data = target(hub, SHARDS[1]).read_all()
    partial = tmp_path / "p"
    partial.write_bytes(data[:600_000])
    seen = run(hub, SHARDS[1], partial)
    assert hub.sent(SHARDS[1]) == len(data) - 600_000
    assert seen == {"bytes": len(data) - 600_000, "rehash": 600_000, "restart": 0}
    assert partial.read_bytes() == data


def test_a_complete_partial_file_is_only_verified(hub, tmp_path):
    partial = tmp_path / "p"
    partial.write_bytes(target(hub, SHARDS[2]).read_all())
    run(hub, SHARDS[2], partial)
    assert hub.requests == []


def test_a_partial_file_longer_than_the_file_starts_over(hub, tmp_path):
    partial = tmp_path / "p"
    partial.write_bytes(bytes(target(hub, SHARDS[2]).size + 10))
    run(hub, SHARDS[2], partial)
    assert hub.sent(SHARDS[2]) == target(hub, SHARDS[2]).size
    assert partial.read_bytes() == target(hub, SHARDS[2]).read_all()


def test_a_partial_file_with_wrong_bytes_fails_verification_and_is_removed(hub, tmp_path):
    partial = tmp_path / "p"
    partial.write_bytes(b"\0" * 1000)  # e.g. a crash that left zeros behind
    with pytest.raises(DownloadError) as err:
        run(hub, SHARDS[0], partial)
    assert SHARDS[0] in err.value.message and "pull again" in err.value.hint
    assert not partial.exists()


def test_a_small_git_file_is_checked_against_its_git_blob_id(hub, tmp_path):
    partial = tmp_path / "p"
    run(hub, "README.md", partial)  # served by the Hub itself (no CDN redirect), ETag = git blob id
    assert git_blob_id(partial.read_bytes()) == target(hub, "README.md").oid


def test_dropped_connections_are_resumed_without_resending_bytes(hub, tmp_path):
    hub.drop(SHARDS[0], 100_000, 200_000, 1)
    partial = tmp_path / "p"
    seen = run(hub, SHARDS[0], partial)
    assert hub.sent(SHARDS[0]) == target(hub, SHARDS[0]).size
    assert seen["bytes"] == target(hub, SHARDS[0]).size
    ranges = [r.range for r in hub.requests if r.host.startswith("localhost")]
    assert ranges == ["bytes=0-", "bytes=100000-", "bytes=300000-", "bytes=300001-"]


def test_connections_that_bring_nothing_give_up_with_the_partial_file_kept(hub, tmp_path):
    hub.drop(SHARDS[0], 70_000, 0, 0, 0)
    partial = tmp_path / "p"
    with pytest.raises(DownloadError) as err:
        run(hub, SHARDS[0], partial, options=TransferOptions(retries=2, backoff=0.0))
    assert "stopped at 68.36 KiB of" in err.value.message and "resumes" in err.value.hint
    assert partial.stat().st_size == 70_000


def test_retries_back_off_exponentially(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    with pytest.raises(DownloadError, match="stopped at 0 B of 10 B"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "p", label="x", size=10, digest=Digest("sha256", "0" * 64),
              headers={}, on_bytes=lambda n: None, options=TransferOptions(retries=4, backoff=1.0), sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0, 8.0]


def test_a_server_ignoring_range_restarts_the_file(hub, tmp_path):
    data = target(hub, SHARDS[1]).read_all()
    partial = tmp_path / "p"
    partial.write_bytes(data[:1000])
    hub.faults.ignore_range.add(SHARDS[1])
    seen = run(hub, SHARDS[1], partial)
    assert seen["restart"] == 1000 and partial.read_bytes() == data


def test_digests():
    data = b"hello moecli"
    assert Digest("git-sha1", git_blob_id(data)).new(len(data)).hexdigest() != git_blob_id(data)  # seeded, not fed
    hasher = Digest("git-sha1", "").new(len(data))
    hasher.update(data)
    assert hasher.hexdigest() == git_blob_id(data)
    with pytest.raises(ValueError):
        Digest("md5", "").new(1)


def test_hash_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 20_000_000)
    done = []
    assert hash_file(path, Digest("sha256", ""), 20_000_000, done.append) == hashlib.sha256(b"x" * 20_000_000).hexdigest()
    assert sum(done) == 20_000_000


def fetch_gated(hub, tmp_path, url: str, headers: dict[str, str]) -> None:
    served = hub.repos[GATED_REPO].files["Gated-MoE-Q4_0.gguf"]
    fetch(url, tmp_path / "p", label="gated", size=served.size, digest=Digest("sha256", served.sha256),
          headers=headers, on_bytes=lambda n: None, options=FAST)


def test_the_token_follows_a_redirect_within_the_hub_but_not_to_the_cdn(hub, tmp_path):
    hub.renamed["old-org/Gated"] = GATED_REPO  # a moved repo: 307 to its new name, on the Hub's origin
    fetch_gated(hub, tmp_path, f"{hub.url}/old-org/Gated/resolve/main/Gated-MoE-Q4_0.gguf",
                {"Authorization": f"Bearer {GRANTED_TOKEN}", "user-agent": "moecli-test"})
    assert [(r.path.split("?")[0].split("/resolve/")[0], r.status, r.authorized) for r in hub.requests] == [
        ("/old-org/Gated", 307, True), (f"/{GATED_REPO}", 302, True),
        (f"/cdn/{hub.repos[GATED_REPO].files['Gated-MoE-Q4_0.gguf'].sha256}", 206, False)]


def test_an_error_answer_becomes_huggingface_hubs_own_error(hub, tmp_path):
    with pytest.raises(GatedRepoError):
        fetch_gated(hub, tmp_path, f"{hub.url}/{GATED_REPO}/resolve/main/Gated-MoE-Q4_0.gguf", {})
    with pytest.raises(RepositoryNotFoundError):
        fetch_gated(hub, tmp_path, f"{hub.url}/no-org/Nothing/resolve/main/x.gguf", {})
    assert not (tmp_path / "p").exists()


def test_offline_mode_is_honoured(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE, as huggingface_hub read it at import
    with pytest.raises(OfflineModeIsEnabled):
        run(hub, SHARDS[0], tmp_path / "p")
    assert hub.requests == []


def test_a_stalled_connection_times_out_and_resumes(hub, tmp_path):
    hub.stall(SHARDS[0], 300_000)  # every response stops after 300,000 bytes and hangs
    partial = tmp_path / "p"
    seen = run(hub, SHARDS[0], partial, options=TransferOptions(backoff=0.0, timeout=0.3))
    assert partial.read_bytes() == target(hub, SHARDS[0]).read_all()
    # every byte that came before a stall was kept: none was sent twice
    assert seen["bytes"] == hub.sent(SHARDS[0]) == target(hub, SHARDS[0]).size


@pytest.fixture
def tls_hub(tiny_files):
    """The Hub and its CDN over https, with a certificate no trust store knows unless told."""
    transfer._tls_context.cache_clear()
    with HubServer(tls=LOCALHOST_TLS) as hub:
        hub.add_repo(TINY_REPO, {SHARDS[0]: tiny_files[SHARDS[0]]})
        yield hub
    transfer._tls_context.cache_clear()


def test_https_is_verified_against_the_trust_store(tls_hub, tmp_path, monkeypatch):
    with pytest.raises(DownloadError) as err:
        run(tls_hub, SHARDS[0], tmp_path / "p")
    assert re.fullmatch(r"the TLS certificate of 127\.0\.0\.1 \(or of where it redirects\) is not trusted: "
                        r"self.signed certificate", err.value.message) and "SSL_CERT_FILE" in err.value.hint
    assert len(tls_hub.requests) <= 1  # not tried again (the server logs a failed handshake at most)
    transfer._tls_context.cache_clear()
    monkeypatch.setenv("SSL_CERT_FILE", str(LOCALHOST_TLS))  # what httpx (and so huggingface_hub) trusts too
    run(tls_hub, SHARDS[0], tmp_path / "p")
    assert (tmp_path / "p").read_bytes() == target(tls_hub, SHARDS[0]).read_all()
    assert tls_hub.requests[-1].host.startswith("localhost") and tls_hub.requests[-1].status == 206


def test_a_file_of_another_size_than_the_hub_lists_is_refused_before_writing(hub, tmp_path):
    served = target(hub, SHARDS[2])
    with pytest.raises(DownloadError) as err:
        fetch(url_of(hub, SHARDS[2]), tmp_path / "p", label=SHARDS[2], size=served.size + 10,
              digest=Digest("sha256", served.sha256), headers={}, on_bytes=lambda n: None, options=FAST)
    assert f"{served.size - 1}/{served.size}'" in err.value.message and f"{served.size + 10} bytes" in err.value.message
    assert not (tmp_path / "p").exists()
