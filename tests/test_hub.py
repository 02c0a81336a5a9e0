"""`moecli pull` through moecli.hub, against a real HTTP hub on 127.0.0.1 (tests/hubserver.py) with
the real huggingface_hub client: resolution, choice, download, resume, verification, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hubserver import GATED_REPO, GRANTED_TOKEN, NOT_GRANTED_TOKEN, SHARDS, TINY_REPO
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from moecli import app, paths, store
from moecli import hub as hubmod
from moecli.errors import BadInput, DiskSpaceError, DoesNotFit, DownloadError, HubError, ModelFileError, StoreError
from moecli.hub import PARTIAL_SUFFIX, Alias, HubFile, ModelRef, TransferOptions, parse_ref
from moecli.hub.pull import _Meter
from moecli.units import fmt_bytes

FAST = TransferOptions(backoff=0.0)
NO_RETRY = TransferOptions(retries=0, backoff=0.0)


def cache() -> Path:
    return hubmod.HubEnv.from_environ().cache_dir


def repo_folder(repo: str = TINY_REPO) -> Path:
    return cache() / ("models--" + repo.replace("/", "--"))


def served(hub, path: str):
    return hub.repos[TINY_REPO].files[path]


def pull(text: str, **hooks) -> hubmod.Pulled:
    """hub.pull of what the user typed. `moecli pull` is app.pull_and_record: this, and the store."""
    return hubmod.pull(parse_ref(text), **hooks)


# -- parsing what the user typed -------------------------------------------------------------------
ALIASES = {"tiny": Alias("tiny", TINY_REPO, "Q8_0")}


@pytest.mark.parametrize("text, repo, quant, revision", [
    ("org/repo", "org/repo", None, "main"),
    ("org/repo:Q4_K_M", "org/repo", "Q4_K_M", "main"),
    ("org/repo:q4_k_m@v1.0", "org/repo", "q4_k_m", "v1.0"),
    ("org/repo@v1.0:UD-Q4_K_XL", "org/repo", "UD-Q4_K_XL", "v1.0"),
    ("hf.co/unsloth/Qwen3.6-35B-A3B-GGUF:Q4_K_M", "unsloth/Qwen3.6-35B-A3B-GGUF", "Q4_K_M", "main"),
    ("https://huggingface.co/org/repo", "org/repo", None, "main"),
    ("org/repo@refs/pr/1", "org/repo", None, "refs/pr/1"),
    ("tiny", TINY_REPO, None, "main"),
    ("TINY:Q4_K_M", TINY_REPO, "Q4_K_M", "main"),
])
def test_parse_ref(text, repo, quant, revision):
    ref = parse_ref(text, ALIASES)
    assert (ref.repo, ref.quant, ref.revision) == (repo, quant, revision)


def test_parse_ref_expands_the_shipped_alias():
    ref = parse_ref("qwen3.6-35b-a3b")
    assert ref.repo == "unsloth/Qwen3.6-35B-A3B-GGUF"
    assert ref.alias is not None and ref.alias.quant == "UD-Q4_K_XL"
    assert ref.quant is None  # the alias's quant is a preference, decided in choose()


def test_user_aliases_override_shipped_ones(monkeypatch, tmp_path):
    from moecli import paths

    (paths.config_dir()).mkdir(parents=True)
    (paths.config_dir() / "aliases.toml").write_text('["qwen3.6-35b-a3b"]\nrepo = "me/My-GGUF"\nquant = "Q8_0"\n')
    assert parse_ref("qwen3.6-35b-a3b").repo == "me/My-GGUF"


@pytest.mark.parametrize("text, words", [
    ("", "no model"),
    ("org/repo:", "empty quant"),
    ("org/repo@", "empty revision"),
    ("org/repo:Q4:Q8", "more than one quant"),
    ("nosuchalias", "known alias"),
    ("org/re po", "not a valid Hub repo id"),
    ("org/repo/extra", "not a valid Hub repo id"),
])
def test_parse_ref_refuses_what_is_not_a_model(text, words):
    with pytest.raises(BadInput) as err:
        parse_ref(text, ALIASES)
    assert words in err.value.message and err.value.hint


def test_a_broken_alias_file_is_one_clear_error(tmp_path):
    from moecli import paths

    paths.config_dir().mkdir(parents=True)
    (paths.config_dir() / "aliases.toml").write_text("[oops\n")
    with pytest.raises(BadInput, match="cannot read aliases"):
        hubmod.load_aliases()


# -- GGUF file names -----------------------------------------------------------------------------
UNSLOTH_FILES = [  # the layout of unsloth/Qwen3.6-35B-A3B-GGUF (sizes made up, ordered by size)
    ("BF16/Qwen3.6-35B-A3B-BF16-00001-of-00002.gguf", 40), ("BF16/Qwen3.6-35B-A3B-BF16-00002-of-00002.gguf", 30),
    ("Qwen3.6-35B-A3B-Q8_0.gguf", 37), ("Qwen3.6-35B-A3B-UD-Q4_K_XL.gguf", 23), ("Qwen3.6-35B-A3B-Q4_K_M.gguf", 21),
    ("Qwen3.6-35B-A3B-UD-IQ3_XXS.gguf", 13), ("Qwen3.6-35B-A3B-IQ4_NL.gguf", 20), ("mmproj-F16.gguf", 1),
    ("mmproj-BF16.gguf", 1), ("imatrix_unsloth.gguf_file", 1), ("README.md", 1), ("config.json", 1),
]


def listing_of(files, repo="unsloth/Qwen3.6-35B-A3B-GGUF"):
    hub_files = tuple(HubFile(p, s, f"{i:064x}", None) for i, (p, s) in enumerate(files))
    return hubmod.RepoListing(repo, "main", "c" * 40, False, hub_files,
                              hubmod.gguf_candidates(hub_files, repo=repo, revision="main", commit="c" * 40,
                                                     endpoint="https://huggingface.co"))


@pytest.mark.parametrize("path, quant", [
    ("Qwen3.6-35B-A3B-Q4_K_M.gguf", "Q4_K_M"),
    ("Qwen3.6-35B-A3B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
    ("Qwen3.6-35B-A3B-UD-IQ3_XXS.gguf", "UD-IQ3_XXS"),
    ("BF16/Qwen3.6-35B-A3B-BF16-00001-of-00002.gguf", "BF16"),
    ("llama-2-7b.Q5_K_S.gguf", "Q5_K_S"),
    ("gpt-oss-20b-mxfp4.gguf", "MXFP4"),
    ("Q4_K_M/model-00001-of-00003.gguf", "Q4_K_M"),
    ("model-f16.gguf", "F16"),
])
def test_quant_of(path, quant):
    assert hubmod.quant_of(path) == quant


def test_candidates_group_shards_and_skip_what_is_not_the_model():
    listing = listing_of(UNSLOTH_FILES)
    assert listing.tags == ("BF16", "Q8_0", "UD-Q4_K_XL", "Q4_K_M", "IQ4_NL", "UD-IQ3_XXS")  # largest first
    bf16 = listing.candidates[0]
    assert [f.path for f in bf16.files] == [p for p, _ in UNSLOTH_FILES[:2]] and bf16.size == 70
    assert all("mmproj" not in f.path for c in listing.candidates for f in c.files)


def test_a_tag_matches_case_insensitively_and_like_llama_cpp():
    listing = listing_of(UNSLOTH_FILES)
    ref = ModelRef(listing.repo, None, "main")
    assert hubmod.choose(listing, ModelRef(listing.repo, "q4_k_m", "main")).candidate.tag == "Q4_K_M"
    assert hubmod.choose(listing, ModelRef(listing.repo, "Q4_K_XL", "main")).candidate.tag == "UD-Q4_K_XL"
    assert hubmod.choose(listing, ModelRef(listing.repo, "bf16", "main")).candidate.size == 70
    assert hubmod.choose(listing, ref).candidate.tag == "Q4_K_M"  # no tag, no planner: llama.cpp's default


def test_an_unknown_tag_lists_the_tags_that_exist():
    listing = listing_of(UNSLOTH_FILES)
    with pytest.raises(HubError) as err:
        hubmod.choose(listing, ModelRef(listing.repo, "Q2_K", "main"))
    assert "has no Q2_K GGUF" in err.value.message
    assert "UD-Q4_K_XL" in err.value.hint and "BF16" in err.value.hint and "mmproj" not in err.value.hint


def test_models_sharing_a_quant_are_named_by_file():
    listing = listing_of([("Qwen3-Instruct-Q4_K_M.gguf", 5), ("Qwen3-Thinking-Q4_K_M.gguf", 5)])
    assert sorted(listing.tags) == ["Qwen3-Instruct-Q4_K_M", "Qwen3-Thinking-Q4_K_M"]
    with pytest.raises(HubError, match="names 2 models"):
        hubmod.choose(listing, ModelRef(listing.repo, "Q4_K_M", "main"))
    ref = ModelRef(listing.repo, "qwen3-thinking-q4_k_m", "main")
    assert hubmod.choose(listing, ref).candidate.files[0].path == "Qwen3-Thinking-Q4_K_M.gguf"


def test_an_incomplete_split_is_refused():
    listing = listing_of([("X-Q8_0-00001-of-00003.gguf", 5), ("X-Q8_0-00003-of-00003.gguf", 5), ("X-Q4_0.gguf", 3)])
    with pytest.raises(HubError, match="only 2 of its shards"):
        hubmod.choose(listing, ModelRef(listing.repo, "Q8_0", "main"))
    assert hubmod.choose(listing, ModelRef(listing.repo, None, "main")).candidate.tag == "Q4_0"


def test_a_repo_without_gguf_is_one_clear_error():
    with pytest.raises(HubError, match="holds no GGUF"):
        hubmod.choose(listing_of([("model.safetensors", 10), ("mmproj-F16.gguf", 1)]), ModelRef("a/b", None, "main"))


# -- choosing without a tag ------------------------------------------------------------------------
def fits_below(limit: int):
    def fits(candidate):
        ok = candidate.size <= limit
        return ok, f"needs {candidate.size}, has {limit}"
    return fits


def test_without_a_tag_the_largest_quant_that_fits_is_chosen_and_explained():
    listing = listing_of(UNSLOTH_FILES)
    choice = hubmod.choose(listing, ModelRef(listing.repo, None, "main"), fits_below(22))
    assert choice.candidate.tag == "Q4_K_M"
    assert "largest quant that fits" in choice.reason and "needs 21, has 22" in choice.reason
    assert "BF16, Q8_0, UD-Q4_K_XL do not" in choice.reason
    assert [c.tag for c, _, _ in choice.considered] == ["BF16", "Q8_0", "UD-Q4_K_XL", "Q4_K_M"]


def test_when_nothing_fits_the_smallest_is_named():
    listing = listing_of(UNSLOTH_FILES)
    with pytest.raises(DoesNotFit) as err:
        hubmod.choose(listing, ModelRef(listing.repo, None, "main"), fits_below(5))
    assert "UD-IQ3_XXS" in err.value.message and "needs 13, has 5" in err.value.message
    assert ":UD-IQ3_XXS" in err.value.hint


def test_an_alias_default_quant_is_taken_when_it_fits_else_the_largest_that_does():
    listing = listing_of(UNSLOTH_FILES)
    ref = ModelRef(listing.repo, None, "main", Alias("q", listing.repo, "UD-Q4_K_XL"))
    assert hubmod.choose(listing, ref, fits_below(100)).candidate.tag == "UD-Q4_K_XL"
    assert hubmod.choose(listing, ref).candidate.tag == "UD-Q4_K_XL"
    fallback = hubmod.choose(listing, ref, fits_below(21))
    assert fallback.candidate.tag == "Q4_K_M"
    assert [c.tag for c, _, _ in fallback.considered][0] == "UD-Q4_K_XL"  # asked once, first


# -- against the hub ---------------------------------------------------------------------------------
def test_list_repo_reads_sizes_and_sha256_through_huggingface_hub(hub):
    listing = hubmod.list_repo(parse_ref(TINY_REPO))
    assert listing.commit == hub.repos[TINY_REPO].commit
    assert set(listing.tags) == {"Q8_0", "Q4_K_M", "UD-Q4_K_XL", "Q4_0"}
    q4 = next(c for c in listing.candidates if c.tag == "Q4_K_M")
    assert [f.path for f in q4.files] == list(SHARDS)
    assert [(f.size, f.sha256) for f in q4.files] == [(served(hub, p).size, served(hub, p).sha256) for p in SHARDS]
    readme = next(f for f in listing.files if f.path == "README.md")
    assert readme.sha256 is None and readme.blob_id == served(hub, "README.md").oid


def test_fits_can_read_each_candidates_header_remotely(hub):
    """The planner's `fits` reads a candidate's GGUF headers over HTTP ranges (moecli.gguf), with
    the URLs and headers hub.remote_gguf gives it; without a tag the largest that fits is pulled."""
    from moecli.gguf import read_model

    seen = {}

    def fits(candidate):
        remote = hubmod.remote_gguf(candidate)
        facts = read_model(remote.open(), open_shard=remote.open)
        seen[candidate.tag] = facts
        return facts.n_bytes < 4_000_000, f"weights {facts.n_bytes} B, {facts.n_expert} experts"

    choices = []
    pulled = pull(TINY_REPO, fits=fits, on_choice=choices.append, options=FAST)
    assert pulled.candidate.tag == "Q4_K_M"  # Q8_0 (5.8 MB of weights) did not fit; Q4_K_M did
    assert seen["Q8_0"].n_expert == 8 and len(seen["Q4_K_M"].shards) == 3
    assert "largest quant that fits" in choices[0].reason
    header_bytes = sum(hub.sent(p) for p in ("Tiny-MoE-Q8_0.gguf",))
    assert header_bytes < served(hub, "Tiny-MoE-Q8_0.gguf").size / 10  # headers only, not the file


def test_pull_fetches_exactly_the_shards_and_lays_out_the_cache(hub):
    events = []
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:q4_k_m", on_progress=events.append)
    commit = hub.repos[TINY_REPO].commit
    assert pulled.name == f"{TINY_REPO}:Q4_K_M"
    assert dict(hub.bytes_sent) == {p: served(hub, p).size for p in SHARDS}  # all of them, nothing else
    folder = repo_folder()
    assert (folder / "refs" / "main").read_text() == commit
    for shard, path in zip(SHARDS, pulled.paths):
        assert path == folder / "snapshots" / commit / shard
        assert path.is_symlink() and not os.path.isabs(os.readlink(path))
        assert path.resolve() == folder / "blobs" / served(hub, shard).sha256
        assert path.read_bytes() == served(hub, shard).read_all()
    assert not list((folder / "blobs").glob(f"*{PARTIAL_SUFFIX}"))
    # the token is not needed here, but no request to the CDN origin ever carries one
    assert all(not r.authorized for r in hub.requests if r.host.startswith("localhost"))
    # one progress stream for the whole model
    assert events[-1].stage == "done" and events[-1].done == events[-1].total == pulled.candidate.size
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert {e.file_index for e in events} == {1, 2, 3} and events[0].n_files == 3
    assert pulled.downloaded == pulled.candidate.size and pulled.seconds > 0
    # recorded in the store
    assert store.resolve(pulled.name) == pulled.paths
    assert store.get("tiny-org/tiny-moe-gguf:q4_k_m").commit == commit


def test_each_file_is_told_before_it_is_made(hub):
    """on_created hears of every partial file, blob and link before it exists (so a caller can
    record that moecli made it before a byte lands); Pulled.created lists the blobs and links."""
    told = []
    pulled = pull(f"{TINY_REPO}:Q4_K_M", on_created=lambda c, path: told.append((c.name, path, os.path.lexists(path))))
    blobs = [p.resolve() for p in pulled.paths]
    made = [(blob.with_name(blob.name + PARTIAL_SUFFIX), blob, link) for blob, link in zip(blobs, pulled.paths)]
    assert [path for _, path, _ in told] == [p for paths in made for p in paths]
    assert not any(existed for _, _, existed in told) and {name for name, _, _ in told} == {pulled.name}
    assert pulled.created == tuple(p for _, blob, link in made for p in (blob, link))


def test_huggingface_hub_and_a_second_pull_find_the_files(hub):
    pulled = pull(f"{TINY_REPO}:Q4_K_M")
    hub.reset_counters()
    commit = hub.repos[TINY_REPO].commit
    for shard, path in zip(SHARDS, pulled.paths):
        assert try_to_load_from_cache(TINY_REPO, shard, cache_dir=cache(), revision=commit) == str(path)
        assert try_to_load_from_cache(TINY_REPO, shard, cache_dir=cache()) == str(path)  # through refs/main
        online = hf_hub_download(TINY_REPO, shard, cache_dir=cache(), endpoint=hub.url, token=False)
        assert online == str(path)
    again = pull(f"{TINY_REPO}:Q4_K_M")
    assert sum(hub.bytes_sent.values()) == 0 and again.downloaded == 0 and again.paths == pulled.paths


def test_files_huggingface_hub_downloaded_are_reused_and_checked(hub):
    commit = hub.repos[TINY_REPO].commit
    hf_path = hf_hub_download(TINY_REPO, SHARDS[0], cache_dir=cache(), endpoint=hub.url, token=False, revision=commit)
    hub.reset_counters()
    events = []
    pulled, record = app.pull_and_record(f"{TINY_REPO}:Q4_K_M", on_progress=events.append)
    assert SHARDS[0] not in hub.bytes_sent and pulled.paths[0] == Path(hf_path)
    assert any(e.stage == "check" and e.file_index == 1 for e in events)
    assert Path(hf_path).resolve() not in record.created  # not ours: rm will keep it


def test_a_pre_existing_file_that_does_not_verify_is_reported_not_replaced(hub):
    commit = hub.repos[TINY_REPO].commit
    hf_path = Path(hf_hub_download(TINY_REPO, SHARDS[1], cache_dir=cache(), endpoint=hub.url, token=False,
                                   revision=commit))
    blob = hf_path.resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(DownloadError) as err:
        app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert SHARDS[1] in err.value.message and str(blob) in err.value.hint
    assert blob.read_bytes() == bytes(data)  # left as it was
    assert store.find(TINY_REPO, "Q4_K_M") is None


def test_a_revision_pins_the_commit(hub):
    pulled, record = app.pull_and_record(f"{TINY_REPO}:Q4_K_M@v1.0")
    assert (repo_folder() / "refs" / "v1.0").read_text() == hub.repos[TINY_REPO].commit
    assert record.revision == "v1.0"


def test_a_sub_folder_quant_keeps_its_path(hub):
    pulled = pull(f"{TINY_REPO}:UD-Q4_K_XL")
    assert [p.name for p in pulled.paths] == ["Tiny-MoE-UD-Q4_K_XL-00001-of-00002.gguf",
                                              "Tiny-MoE-UD-Q4_K_XL-00002-of-00002.gguf"]
    assert all(p.parent.name == "UD-Q4_K_XL" for p in pulled.paths)


# -- interrupted and corrupted transfers ---------------------------------------------------------------
def test_a_dropped_connection_is_resumed_in_the_same_run(hub):
    hub.drop(SHARDS[1], 300_000)
    pulled = pull(f"{TINY_REPO}:Q4_K_M", options=FAST)
    assert hub.sent(SHARDS[1]) == served(hub, SHARDS[1]).size  # not one byte sent twice
    ranges = [r.range for r in hub.requests if r.host.startswith("localhost") and SHARDS[1] in r.path]
    assert ranges == ["bytes=0-", "bytes=300000-"]
    assert pulled.paths[1].read_bytes() == served(hub, SHARDS[1]).read_all()


def test_a_pull_cut_off_resumes_in_the_next_run_with_only_the_missing_bytes(hub):
    hub.drop(SHARDS[2], 250_000, 0)  # cut, then a connection that brings nothing: give up
    with pytest.raises(DownloadError) as err:
        app.pull_and_record(f"{TINY_REPO}:Q4_K_M", options=NO_RETRY)
    assert SHARDS[2] in err.value.message and "resumes" in err.value.hint
    sha = served(hub, SHARDS[2]).sha256
    partial = repo_folder() / "blobs" / (sha + PARTIAL_SUFFIX)
    assert partial.stat().st_size == 250_000
    assert not (repo_folder() / "blobs" / sha).exists()  # nothing that looks complete
    assert not os.path.lexists(repo_folder() / "snapshots" / hub.repos[TINY_REPO].commit / SHARDS[2])
    assert store.find(TINY_REPO, "Q4_K_M") is None

    hub.reset_counters()
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert dict(hub.bytes_sent) == {SHARDS[2]: served(hub, SHARDS[2]).size - 250_000}
    assert pulled.paths[2].read_bytes() == served(hub, SHARDS[2]).read_all()
    assert not partial.exists()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_killed_pull_resumes_with_only_the_missing_bytes(hub, how):
    stall_at = 400_000
    hub.stall(SHARDS[0], stall_at)
    script = textwrap.dedent(f"""
        from moecli import app
        app.pull_and_record({TINY_REPO + ':Q4_K_M'!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = repo_folder() / "blobs" / (served(hub, SHARDS[0]).sha256 + PARTIAL_SUFFIX)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= stall_at):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never got the first bytes"
        time.sleep(0.02)
    child.send_signal(how)
    child.wait(timeout=30)
    hub.release()
    kept = partial.stat().st_size
    assert kept == stall_at
    assert not (repo_folder() / "blobs" / served(hub, SHARDS[0]).sha256).exists()
    assert store.find(TINY_REPO, "Q4_K_M") is None

    hub.reset_counters()
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert hub.sent(SHARDS[0]) == served(hub, SHARDS[0]).size - kept
    assert pulled.paths[0].read_bytes() == served(hub, SHARDS[0]).read_all()


def test_a_corrupted_byte_is_caught_and_nothing_is_recorded(hub):
    hub.corrupt(SHARDS[1], 123_456)
    with pytest.raises(DownloadError) as err:
        app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert SHARDS[1] in err.value.message and "verification" in err.value.message
    sha = served(hub, SHARDS[1]).sha256
    blobs = repo_folder() / "blobs"
    assert not (blobs / sha).exists() and not (blobs / (sha + PARTIAL_SUFFIX)).exists()
    assert not os.path.lexists(repo_folder() / "snapshots" / hub.repos[TINY_REPO].commit / SHARDS[1])
    assert store.find(TINY_REPO, "Q4_K_M") is None
    assert (repo_folder() / "snapshots" / hub.repos[TINY_REPO].commit / SHARDS[0]).exists()  # the good one stays

    hub.faults.clear()
    hub.reset_counters()
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert dict(hub.bytes_sent) == {SHARDS[1]: served(hub, SHARDS[1]).size, SHARDS[2]: served(hub, SHARDS[2]).size}
    assert store.resolve(pulled.name) == pulled.paths


def test_a_server_that_ignores_range_restarts_the_file(hub):
    hub.drop(SHARDS[0], 100_000)
    hub.faults.ignore_range.add(SHARDS[0])
    events = []
    pulled = pull(f"{TINY_REPO}:Q4_K_M", options=FAST, on_progress=events.append)
    assert hub.sent(SHARDS[0]) == served(hub, SHARDS[0]).size + 100_000
    assert pulled.paths[0].read_bytes() == served(hub, SHARDS[0]).read_all()
    assert events[-1].done == pulled.candidate.size


def test_a_file_that_is_not_a_gguf_is_not_recorded(hub, hub_server):
    hub.add_repo("tiny-org/Broken-GGUF", {"Broken-Q4_K_M.gguf": b"NOPE" + bytes(5000)})
    with pytest.raises(ModelFileError, match="not a GGUF"):
        app.pull_and_record("tiny-org/Broken-GGUF:Q4_K_M")
    assert store.find("tiny-org/Broken-GGUF") is None


def test_a_caller_check_runs_on_the_files(hub):
    from moecli.gguf import read_model

    facts = []
    pulled, record = app.pull_and_record(f"{TINY_REPO}:Q4_K_M", check_model=lambda paths: facts.append(read_model(paths[0])))
    assert facts[0].is_moe and len(facts[0].shards) == 3 and facts[0].n_expert == 8
    assert record.name == pulled.name


def test_another_pull_holding_the_lock_is_reported(hub):
    from filelock import FileLock

    listing = hubmod.list_repo(parse_ref(TINY_REPO))
    q4 = next(c for c in listing.candidates if c.tag == "Q4_K_M")
    lock = cache() / ".locks" / repo_folder().name / f"{q4.files[0].sha256}.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(lock):
        with pytest.raises(DownloadError, match="another process is downloading"):
            hubmod.download(q4, lock_timeout=0.2)


# -- one clear line for each failure -----------------------------------------------------------------
def test_no_network(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError) as err:
        pull(f"{TINY_REPO}:Q4_K_M")
    assert err.value.message == f"cannot reach http://127.0.0.1:{port}: connection refused"
    assert "HF_ENDPOINT" in err.value.hint


def test_unknown_repo(hub):
    with pytest.raises(HubError) as err:
        pull("tiny-org/No-Such-GGUF:Q4_K_M")
    assert err.value.message == f"tiny-org/No-Such-GGUF is not on {hub.url} (or is private)"
    assert "HF_TOKEN" in err.value.hint


def test_unknown_revision(hub):
    with pytest.raises(HubError, match="has no revision 'nope'"):
        pull(f"{TINY_REPO}:Q4_K_M@nope")


def test_unknown_tag_lists_the_tags(hub):
    with pytest.raises(HubError) as err:
        pull(f"{TINY_REPO}:IQ1_S")
    assert err.value.message == f"{TINY_REPO} has no IQ1_S GGUF"
    assert err.value.hint == "tags in the repo: Q8_0, Q4_K_M, UD-Q4_K_XL, Q4_0"


def test_gated_repo_without_token(hub):
    with pytest.raises(HubError) as err:
        pull(f"{GATED_REPO}:Q4_0")
    assert "is gated" in err.value.message and "HF_TOKEN" in err.value.hint
    assert sum(hub.bytes_sent.values()) == 0


def test_gated_repo_with_a_token_not_granted(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", NOT_GRANTED_TOKEN)
    with pytest.raises(HubError) as err:
        pull(f"{GATED_REPO}:Q4_0")
    assert err.value.message == f"{GATED_REPO} is gated and your token has not been granted access"


def test_gated_repo_with_a_granted_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    pulled = pull(f"{GATED_REPO}:Q4_0")
    assert pulled.paths[0].is_file()
    hub_requests = [r for r in hub.requests if r.host.startswith("127.0.0.1")]
    cdn_requests = [r for r in hub.requests if r.host.startswith("localhost")]
    assert all(r.authorized for r in hub_requests) and cdn_requests
    assert not any(r.authorized for r in cdn_requests)  # the token stays on the Hub's origin


def test_an_invalid_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_nonsense")
    with pytest.raises(HubError, match="refused the token in HF_TOKEN"):
        pull(f"{TINY_REPO}:Q4_K_M")


def test_not_enough_disk(hub):
    size = sum(served(hub, p).size for p in SHARDS)
    with pytest.raises(DiskSpaceError) as err:
        pull(f"{TINY_REPO}:Q4_K_M", free_space=lambda path: 1_000_000)
    assert err.value.message == (f"not enough disk space for {TINY_REPO}:Q4_K_M: "
                                 f"{fmt_bytes(size)} still to download, 977 KiB free in {cache()}")
    assert "HF_HUB_CACHE" in err.value.hint
    assert sum(hub.bytes_sent.values()) == 0


def test_the_disk_check_counts_only_what_is_missing(hub):
    hub.drop(SHARDS[0], 500_000, 0)
    with pytest.raises(DownloadError):
        pull(f"{TINY_REPO}:Q4_K_M", options=NO_RETRY)
    asked = []
    size = sum(served(hub, p).size for p in SHARDS)
    pull(f"{TINY_REPO}:Q4_K_M", free_space=lambda path: asked.append(path) or size - 500_000)
    assert asked == [repo_folder() / "blobs"]


def test_offline_uses_what_was_pulled_and_says_so_for_the_rest(hub, monkeypatch):
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset_counters()
    again, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert again.paths == pulled.paths and hub.requests == []
    with pytest.raises(HubError) as err:
        app.pull_and_record(f"{TINY_REPO}:Q8_0")
    assert "HF_HUB_OFFLINE" in err.value.message


def test_a_local_file_is_not_pulled(tiny_files):
    with pytest.raises(BadInput, match="nothing to pull"):
        app.pull_and_record(str(tiny_files["Tiny-MoE-Q8_0.gguf"]))


# -- finding what is already here ----------------------------------------------------------------------
def test_locate_finds_local_files_with_their_shards(tiny_files):
    first = tiny_files[SHARDS[0]]
    assert app.locate(str(first)).files == tuple(tiny_files[s] for s in SHARDS)
    assert app.locate(str(tiny_files[SHARDS[2]])).path == first
    with pytest.raises(ModelFileError, match="does not exist"):
        app.locate(str(first.parent / "missing.gguf"))


def test_locate_reports_a_missing_shard(tmp_path, tiny_files):
    for shard in SHARDS[:2]:
        (tmp_path / shard).write_bytes(tiny_files[shard].read_bytes())
    with pytest.raises(ModelFileError, match="00003-of-00003.gguf is missing"):
        app.locate(str(tmp_path / SHARDS[0]))


def test_locate_finds_pulled_models_by_name_repo_or_alias(hub):
    with pytest.raises(StoreError, match="not pulled yet"):
        app.locate(f"{TINY_REPO}:Q4_K_M")
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    assert app.locate(f"{TINY_REPO}:q4_k_m").files == pulled.paths
    assert app.locate(f"hf.co/{TINY_REPO}:Q4_K_M").files == pulled.paths
    (paths.config_dir()).mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "aliases.toml").write_text(f'[tiny]\nrepo = "{TINY_REPO}"\nquant = "Q4_K_M"\n')
    assert app.locate("tiny").files == pulled.paths


def test_progress_reports_speed_and_eta_over_the_last_seconds():
    listing = listing_of([("M-Q4_K_M-00001-of-00002.gguf", 600), ("M-Q4_K_M-00002-of-00002.gguf", 400)])
    now = [100.0]
    events = []
    meter = _Meter(listing.candidates[0], events.append, clock=lambda: now[0])
    meter.at("check", 1)
    meter.add(200, transferred=False)  # already on disk: counts as done, not as speed
    meter.at("download", 1)
    for _ in range(8):  # 50 B/s for 8 s, then 100 B/s
        now[0] += 1.0
        meter.add(50, transferred=True)
    for _ in range(3):
        now[0] += 1.0
        meter.add(100, transferred=True)
    last = events[-1]
    assert (last.done, last.downloaded, last.total, last.n_files) == (900, 700, 1000, 2)
    assert last.speed == pytest.approx((50 * 2 + 100 * 3) / 5)  # the last 5 s
    assert last.eta == pytest.approx(100 / last.speed)
    assert events[0].stage == "check" and events[0].eta is None


def test_an_endpoint_that_is_not_a_hub(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>a captive portal</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(HubError) as err:
            pull(f"{TINY_REPO}:Q4_K_M")
        assert "does not answer like the Hugging Face Hub" in err.value.message and "HF_ENDPOINT" in err.value.hint
    finally:
        server.shutdown()
        server.server_close()


def test_a_pull_prints_nothing_itself(hub, capfd, caplog):
    """Progress goes to callbacks and failures to exceptions: no progress bar, retry chatter or
    warning of huggingface_hub reaches the terminal, even when a connection drops."""
    import logging

    caplog.set_level(logging.INFO)
    hub.drop(SHARDS[0], 100_000)
    pull(f"{TINY_REPO}:Q4_K_M", options=FAST)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert [r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelno >= logging.INFO] == []
