"""Issue 11, the store / Hub / filesystem defects: each test here failed before its fix (checked by
running it against the code of main before the fix; the number is the issue's).

Filesystem faults are real where root can make them (a regular file where a folder is expected;
`chattr +i` for a read-only folder, skipped where the file system refuses it) and made by
monkeypatching os-level calls where it cannot (ENOSPC in the moecli home)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from cliutil import assert_one_error, invoke, moecli
from hubserver import TINY_REPO
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from moecli import app, paths, store
from moecli import hub as hubmod
from moecli.errors import BadInput, DownloadError
from moecli.hub import TransferOptions

FAST = TransferOptions(backoff=0.0, retries=0)


def cache_dir() -> Path:
    return hubmod.HubEnv.from_environ().cache_dir


def blobs_of(repo: str) -> list[Path]:
    folder = cache_dir() / ("models--" + repo.replace("/", "--")) / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def moving(hub, tiny_files, request):
    """A repo of two single-file quants, its own per test (the session's hub is shared)."""
    repo = f"tiny-org/Moving-{request.node.name[-40:].replace('[', '-').replace(']', '')}-GGUF"
    files = {"Moving-Q4_0.gguf": tiny_files["Tiny-MoE-Q4_0.gguf"], "Moving-Q8_0.gguf": tiny_files["Tiny-MoE-Q8_0.gguf"],
             "README.md": b"# first\n"}
    hub.add_repo(repo, files)
    return repo, files


# -- 2: a moved refs/main keeps earlier pulls visible ----------------------------------------------
def test_a_quant_pulled_before_a_new_commit_is_still_found_offline(hub, moving):
    repo, files = moving
    first, _ = app.pull_and_record(f"{repo}:Q4_0")
    old_commit = first.candidate.commit
    hub.add_repo(repo, {**files, "README.md": b"# second: a new commit\n"})  # the repo gets a new commit
    second, _ = app.pull_and_record(f"{repo}:Q8_0")
    new_commit = second.candidate.commit
    assert new_commit != old_commit
    assert (cache_dir() / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text() == new_commit
    # huggingface_hub offline (and llama.cpp's -hf --offline, which reads the same refs/main snapshot)
    found = hf_hub_download(repo, "Moving-Q4_0.gguf", cache_dir=cache_dir(), local_files_only=True)
    assert f"/snapshots/{new_commit}/" in found
    assert Path(found).read_bytes() == Path(files["Moving-Q4_0.gguf"]).read_bytes()
    assert try_to_load_from_cache(repo, "Moving-Q4_0.gguf", cache_dir=cache_dir()) == found
    assert store.get(f"{repo}:Q4_0").path == Path(found)  # the record follows refs/main
    # and removing both leaves nothing of moecli's behind (the carried link was recorded as moecli's)
    for name in (f"{repo}:Q4_0", f"{repo}:Q8_0"):
        store.remove(store.plan_removal(name))
    assert blobs_of(repo) == []
    snapshots = cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
    assert not any(p.is_symlink() for p in snapshots.rglob("*"))


def test_a_quant_that_changed_upstream_is_named_with_what_to_do(hub, moving):
    repo, files = moving
    app.pull_and_record(f"{repo}:Q4_0")
    hub.add_repo(repo, {**files, "Moving-Q4_0.gguf": files["Moving-Q8_0.gguf"]})  # Q4_0's bytes change upstream
    ran = invoke("pull", f"{repo}:Q8_0", "--yes")
    assert ran.code == 0, ran.output
    assert f"{repo}:Q4_0: Moving-Q4_0.gguf changed upstream" in ran.stderr.replace("\n", " ")
    assert f"moecli pull {repo}:Q4_0" in ran.stderr.replace("\n", " ")
    assert store.get(f"{repo}:Q4_0").present  # still runs from the old snapshot


def test_llama_cache_elsewhere_is_named(hub, moving, monkeypatch, tmp_path):
    repo, _ = moving
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama"))
    ran = invoke("pull", f"{repo}:Q4_0", "--yes")
    assert ran.code == 0, ran.output
    assert "LLAMA_CACHE=" in ran.stderr and "HF_HUB_CACHE" in ran.stderr
    monkeypatch.setenv("LLAMA_CACHE", str(cache_dir()))
    assert "LLAMA_CACHE" not in invoke("pull", f"{repo}:Q4_0", "--yes").stderr


# -- 4: a full moecli home during pull -------------------------------------------------------------
def test_a_full_moecli_home_stops_the_pull_before_its_first_byte_and_leaks_nothing(hub, moving, monkeypatch):
    repo, _ = moving
    real_replace = os.replace

    def full(src, dst, *a, **kw):
        if str(dst).startswith(str(paths.data_dir())):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full)
    ran = invoke("pull", f"{repo}:Q4_0", "--yes")
    assert_one_error(ran, "cannot write moecli's record", "No space left on device")
    assert "MOECLI_HOME" in ran.stderr
    assert blobs_of(repo) == []  # no partial file: not a byte of the model was written (the header was read to plan)
    monkeypatch.setattr(os, "replace", real_replace)  # space is freed
    pulled, _ = app.pull_and_record(f"{repo}:Q4_0")
    removal = store.plan_removal(pulled.name)
    assert removal.keep == () and removal.freed == pulled.candidate.size
    store.remove(removal)
    assert blobs_of(repo) == []


# -- 5: filesystem faults are one line -------------------------------------------------------------
def test_a_regular_file_as_moecli_home(hub, moving, tmp_path, monkeypatch):
    repo, _ = moving
    home = tmp_path / "moecli-home"
    home.write_text("not a folder")
    monkeypatch.setenv("MOECLI_HOME", str(home))
    ran = invoke("pull", f"{repo}:Q4_0", "--yes")
    assert_one_error(ran, str(home))
    assert "MOECLI_HOME" in ran.stderr


def test_a_regular_file_as_hf_home(hub, moving, tmp_path, monkeypatch):
    repo, _ = moving
    hf_home = tmp_path / "hf-home"
    hf_home.write_text("not a folder")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    ran = invoke("pull", f"{repo}:Q4_0", "--yes")
    assert_one_error(ran, "cannot use the Hugging Face cache", str(hf_home))
    assert "HF_HOME" in ran.stderr


def test_a_read_only_hf_home(hub, moving, tmp_path, monkeypatch):
    repo, _ = moving
    hf_home = tmp_path / "ro-hf"
    hf_home.mkdir()
    if subprocess.run(["chattr", "+i", str(hf_home)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        monkeypatch.setenv("HF_HOME", str(hf_home))
        ran = invoke("pull", f"{repo}:Q4_0", "--yes")
        assert_one_error(ran, "cannot use the Hugging Face cache", str(hf_home))
        assert "HF_HOME" in ran.stderr
    finally:
        subprocess.run(["chattr", "-i", str(hf_home)], check=False)


def test_permission_denied_in_the_hf_cache(hub, moving, monkeypatch):
    """Root ignores permission bits: os.mkdir is made to answer EACCES inside the cache."""
    repo, _ = moving
    real_mkdir = os.mkdir
    cache = str(cache_dir())

    def denied(path, *a, **kw):
        if str(path).startswith(cache):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", denied)
    ran = invoke("pull", f"{repo}:Q4_0", "--yes")
    assert_one_error(ran, "Permission denied", cache)


def test_a_bad_download_timeout_is_one_line(hub):
    ran = moecli("pull", f"{TINY_REPO}:Q4_0", HF_HUB_DOWNLOAD_TIMEOUT="abc", HF_ENDPOINT=hub.url)
    assert_one_error(ran, "HF_HUB_DOWNLOAD_TIMEOUT='abc'")
    with pytest.raises(BadInput, match="HF_HUB_ETAG_TIMEOUT"):
        hubmod.env.check_environ({"HF_HUB_ETAG_TIMEOUT": "1.5s"})


# -- 6: an interrupted pull is listed and removable ------------------------------------------------
def test_an_interrupted_pull_is_listed_with_its_progress_and_rm_deletes_it(hub, moving):
    repo, _ = moving
    hub.drop("Moving-Q8_0.gguf", 200_000, 0)
    with pytest.raises(DownloadError, match="stopped at"):
        app.pull_and_record(f"{repo}:Q8_0", options=FAST)
    partial = [p for p in blobs_of(repo) if p.name.endswith(hubmod.PARTIAL_SUFFIX)]
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    listed = invoke("list")
    assert f"{repo}:Q8_0  partial: " in listed.stdout and "%" in listed.stdout, listed.output
    assert f"moecli pull {repo}:Q8_0" in listed.stderr and f"moecli rm {repo}:Q8_0" in listed.stderr
    as_json = json.loads(invoke("list", "--json").stdout)
    assert as_json == [{"name": f"{repo}:Q8_0", "state": "partial", "size": as_json[0]["size"],
                        "downloaded": partial[0].stat().st_size}]
    ran = invoke("rm", f"{repo}:Q8_0", "--yes")
    assert ran.code == 0, ran.output
    assert f"delete {partial[0]}" in ran.stdout
    assert blobs_of(repo) == [] and "no models pulled yet" in invoke("list").stdout


# -- 7: "verified" says what was checked; --verify and `moecli verify` re-hash -------------------------
def _flip_a_byte_keeping_the_time(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_repull_says_what_it_checked_and_verify_rehashes(hub, moving, monkeypatch):
    repo, _ = moving
    name = f"{repo}:Q4_0"
    assert invoke("pull", name, "--yes").code == 0
    _flip_a_byte_keeping_the_time(store.get(name).files[0].blob)
    again = invoke("pull", name, "--yes")
    assert again.code == 0
    assert "), verified:" not in again.stdout  # it did not read the bytes: it must not say "verified"
    assert f"already present, verified on {store.now():%Y-%m-%d}" in again.stdout
    assert "fetching" not in again.stderr  # nothing to fetch
    assert_one_error(invoke("pull", name, "--yes", "--verify"), "does not match the Hub's sha256")
    ran = invoke("verify", name)
    assert_one_error(ran, "1 of 1 files", "do not verify")
    assert "BAD  Moving-Q4_0.gguf: sha256 is " in ran.stdout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = invoke("pull", name, "--yes")
    assert offline.code == 0, offline.output
    assert "offline: nothing fetched" in offline.stdout and "fetching" not in offline.output
    assert "), verified:" not in offline.stdout
    assert_one_error(invoke("pull", name, "--yes", "--verify"), "do not verify")


def test_verify_reports_each_good_file(hub):
    assert invoke("pull", f"{TINY_REPO}:Q4_K_M", "--yes").code == 0
    ran = invoke("verify", f"{TINY_REPO}:Q4_K_M")
    assert ran.code == 0, ran.output
    assert ran.stdout.count("ok   Tiny-MoE-Q4_K_M-0000") == 3
    assert store.get(f"{TINY_REPO}:Q4_K_M").files[0].verified_at is not None


# -- 14: a damaged record is shown, not dropped ------------------------------------------------------
def test_a_damaged_record_is_listed_and_rm_forgets_it(hub, moving):
    repo, _ = moving
    pulled, _ = app.pull_and_record(f"{repo}:Q4_0")
    record = next(store.store_dir().glob("*.json"))
    data = json.loads(record.read_text())
    del data["files"]
    record.write_text(json.dumps(data))
    listed = invoke("list")
    assert f"{repo}:Q4_0: its record {record} lacks 'files'" in listed.stderr.replace("\n", " "), listed.output
    assert f"moecli rm {repo}:Q4_0" in listed.stderr
    ran = invoke("rm", f"{repo}:Q4_0", "--yes")
    assert ran.code == 0, ran.output
    assert not record.exists() and blobs_of(repo) == []  # its ledger said which files moecli made
    assert "no models pulled yet" in invoke("list").stdout


def test_a_record_that_is_not_json_is_listed_by_its_file(hub):
    store.store_dir().mkdir(parents=True)
    (store.store_dir() / "junk.json").write_text("{not json")
    listed = invoke("list")
    assert "junk: its record" in listed.stderr and "is not valid JSON" in listed.stderr
    assert invoke("rm", "junk", "--yes").code == 0
    assert not (store.store_dir() / "junk.json").exists()


# -- 15: misleading messages -----------------------------------------------------------------------
def test_a_path_like_name_that_is_no_file_is_not_called_a_local_file():
    line = assert_one_error(invoke("pull", "../../etc:Q4"), "not a Hub repo id", "no such file")
    assert "is a local file" not in line


def test_a_blob_another_tag_uses_is_kept_for_that_reason(hub, tiny_files, request):
    repo = "tiny-org/Twins-GGUF"
    same = tiny_files["Tiny-MoE-Q4_0.gguf"]
    hub.add_repo(repo, {"Twin-A-Q4_0.gguf": same, "Twin-B-Q4_0.gguf": same})
    a, _ = app.pull_and_record(f"{repo}:Twin-A-Q4_0")
    b, _ = app.pull_and_record(f"{repo}:Twin-B-Q4_0")
    kept = dict(store.plan_removal(b.name).keep)
    assert kept == {b.files[0].blob: f"{a.name} uses it"}


def test_rm_in_a_pipe_refuses_before_listing_what_it_would_delete(hub, moving):
    repo, _ = moving
    app.pull_and_record(f"{repo}:Q4_0")
    ran = invoke("rm", f"{repo}:Q4_0")
    assert_one_error(ran, "without a confirmation")
    assert "delete " not in ran.stdout


def test_records_are_kept_per_hugging_face_cache(hub, moving, tmp_path, monkeypatch):
    repo, _ = moving
    name = f"{repo}:Q4_0"
    first, _ = app.pull_and_record(name)
    first_blob = first.files[0].blob
    original = os.environ["HF_HOME"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-hf"))
    assert store.list_models() == ()  # the other cache's records are not this one's
    second, _ = app.pull_and_record(name)
    assert second.files[0].blob != first_blob
    store.remove(store.plan_removal(name))
    assert first_blob.exists()  # rm in this cache never deletes files in the other one
    assert not second.files[0].blob.exists()
    monkeypatch.setenv("HF_HOME", original)
    assert [m.name for m in store.list_models()] == [name]



def test_a_record_from_before_records_were_kept_per_cache_is_still_this_caches(hub, moving, tmp_path, monkeypatch):
    repo, _ = moving
    pulled, record = app.pull_and_record(f"{repo}:Q4_0")
    flat = paths.data_dir() / "store" / store._record_path(record.name).name  # noqa: SLF001 - the old layout
    store._record_path(record.name).rename(flat)  # noqa: SLF001
    assert [m.name for m in store.list_models()] == [record.name]
    original = os.environ["HF_HOME"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-hf"))
    assert store.list_models() == ()  # its files are in the other cache
    monkeypatch.setenv("HF_HOME", original)
    store.remove(store.plan_removal(record.name))
    assert not flat.exists() and blobs_of(repo) == []


def test_a_llama_cpp_assert_is_one_line_not_a_backtrace(tmp_path):
    """GGML_ASSERT calls ggml's abort callback, then abort(); without one it prints a backtrace
    (through gdb where installed). A hybrid qwen35moe of 2 layers has no attention layer, so
    llama.cpp's KV cache gets no buffer (GGML_ASSERT(buffer), ggml-backend.cpp)."""
    from moecli.synth import build_recipe

    path = tmp_path / "no-attention.gguf"
    build_recipe("demo", n_layer=2).write(path, fill="random", seed=0)
    ran = moecli("run", str(path), "-p", "hi", "-n", "2", "--cpu-only", timeout=120)
    line = assert_one_error(ran, "llama.cpp stopped", "GGML_ASSERT")
    assert "ggml-backend.cpp" in line and "gdb" not in ran.output and ran.code == 1
