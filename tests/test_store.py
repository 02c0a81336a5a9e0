"""moecli.store: records of pulled models, name lookup, and removal that deletes only what moecli
created. The first tests build a Hugging Face cache by hand; the last ones pull through the hub
(app.pull_and_record: hub.pull, and the records)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hubserver import SHARDS, TINY_REPO
from huggingface_hub import hf_hub_download

from moecli import app, paths, store
from moecli import hub as hubmod
from moecli.errors import StoreError

COMMIT = "a" * 40


def make_model(root: Path, repo: str, tag: str, names: list[str], *, created: bool = True,
               commit: str = COMMIT, size: int = 1000) -> store.StoredModel:
    """Files in an HF-cache layout (blobs + relative snapshot links) and the record for them."""
    folder = root / ("models--" + repo.replace("/", "--"))
    files, made = [], []
    for i, name in enumerate(names):
        digest = f"{abs(hash((repo, tag, name))):064x}"[-64:]
        blob = folder / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(bytes([i]) * size)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
        files.append(store.StoredFile(name, size, digest, link, blob, blob.stat().st_mtime_ns))
        made += [blob, link]
    return store.StoredModel(f"{repo}:{tag}", repo, tag, tag, "main", commit, tuple(files), store.now(),
                             tuple(made) if created else ())


@pytest.fixture
def cache_root(tmp_path) -> Path:
    return tmp_path / "hf" / "hub"


def test_records_round_trip_and_list_sorted(cache_root):
    b = store.add(make_model(cache_root, "org/B-GGUF", "Q8_0", ["b.gguf"]))
    a = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a-00001-of-00002.gguf", "a-00002-of-00002.gguf"]))
    assert [m.name for m in store.list_models()] == [a.name, b.name]
    got = store.get("org/a-gguf:q4_k_m")
    assert got == a and got.size == 2000 and got.path.name == "a-00001-of-00002.gguf" and got.present
    assert (paths.data_dir() / "store").is_dir()


@pytest.mark.parametrize("name", ["org/A-GGUF:Q4_K_M", "ORG/A-GGUF", "A-GGUF:Q4_K_M", "a-gguf", "hf.co/org/A-GGUF:Q4_K_M"])
def test_get_accepts_unambiguous_names(cache_root, name):
    store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    store.add(make_model(cache_root, "org/B-GGUF", "Q4_K_M", ["b.gguf"]))
    assert store.get(name).repo == "org/A-GGUF"


def test_an_ambiguous_or_unknown_name_is_one_clear_error(cache_root):
    store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    store.add(make_model(cache_root, "org/A-GGUF", "Q8_0", ["a8.gguf"]))
    with pytest.raises(StoreError) as err:
        store.get("org/A-GGUF")
    assert "names 2 pulled models" in err.value.message and "moecli list" in err.value.hint
    with pytest.raises(StoreError) as err:
        store.get("org/C-GGUF")
    assert "org/A-GGUF:Q4_K_M, org/A-GGUF:Q8_0" in err.value.message and "moecli pull org/C-GGUF" in err.value.hint


def test_find_by_repo_and_tag_or_quant(cache_root):
    store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    assert store.find("org/a-gguf", "q4_k_m").tag == "Q4_K_M"
    assert store.find("org/A-GGUF").tag == "Q4_K_M"
    assert store.find("org/A-GGUF", "Q8_0") is None


def test_resolve_gives_paths_and_notices_a_cleaned_cache(cache_root):
    model = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a-00001-of-00002.gguf", "a-00002-of-00002.gguf"]))
    assert store.resolve("org/A-GGUF:Q4_K_M") == model.paths
    model.files[1].blob.unlink()
    assert not store.get(model.name).present
    with pytest.raises(StoreError, match="is gone from the Hugging Face cache"):
        store.resolve(model.name)


def test_an_unreadable_record_is_skipped(cache_root):
    store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    (store.store_dir() / "junk.json").write_text("{not json")
    assert [m.name for m in store.list_models()] == ["org/A-GGUF:Q4_K_M"]


def test_remove_deletes_what_moecli_created_and_empty_snapshot_folders(cache_root):
    model = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["sub/a-00001-of-00002.gguf", "sub/a-00002-of-00002.gguf"]))
    removal = store.plan_removal(model.name)
    assert set(removal.delete) == {*model.paths, *(f.blob for f in model.files)}
    assert removal.keep == () and removal.freed == 2000
    assert all(p.exists() for p in removal.delete)  # planning touches nothing
    store.remove(removal)
    assert not any(os.path.lexists(p) for p in removal.delete)
    assert not (cache_root / "models--org--A-GGUF" / "snapshots" / COMMIT).exists()
    assert store.list_models() == ()


def test_remove_keeps_files_moecli_did_not_download(cache_root):
    model = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"], created=False))
    removal = store.plan_removal(model.name)
    assert removal.delete == () and removal.freed == 0
    assert {p for p, _ in removal.keep} == {model.files[0].path, model.files[0].blob}
    assert all("before moecli pulled it" in why for _, why in removal.keep)
    store.remove(removal)
    assert model.files[0].path.read_bytes() == bytes(1000)
    assert store.list_models() == ()


def test_remove_keeps_a_blob_another_snapshot_links_to(cache_root):
    model = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    blob = model.files[0].blob
    other = cache_root / "models--org--A-GGUF" / "snapshots" / ("b" * 40) / "a.gguf"  # e.g. `hf download` of an older commit
    other.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, other.parent), other)
    removal = store.plan_removal(model.name)
    assert removal.delete == (model.files[0].path,)
    assert removal.keep == ((blob, f"{other} still links to it"),)
    store.remove(removal)
    assert other.read_bytes() == bytes(1000)


def test_remove_keeps_what_another_record_uses(cache_root):
    a = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    shared = store.add(store.StoredModel("org/A-GGUF:ALIAS", "org/A-GGUF", "ALIAS", "Q4_K_M", "main", COMMIT,
                                         a.files, store.now()))
    removal = store.plan_removal(a.name)
    assert removal.delete == ()
    assert all(why == f"{shared.name} uses it" for _, why in removal.keep)


def test_a_new_pull_of_the_same_name_keeps_what_earlier_pulls_created(cache_root):
    first = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a.gguf"]))
    second = store.add(make_model(cache_root, "org/A-GGUF", "Q4_K_M", ["a2.gguf"], commit="c" * 40))
    assert set(first.created) <= set(second.created)
    removal = store.plan_removal(second.name)
    assert set(removal.delete) == set(first.created) | set(second.created)


# -- through a real pull ---------------------------------------------------------------------------------
def test_pull_then_rm_leaves_the_cache_as_it_was(hub):
    cache = hubmod.HubEnv.from_environ().cache_dir
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    blobs = [p.resolve() for p in pulled.paths]
    removal = store.plan_removal(pulled.name)
    assert set(removal.delete) == {*pulled.paths, *blobs}
    assert removal.freed == pulled.candidate.size
    store.remove(removal)
    assert not any(os.path.lexists(p) for p in (*pulled.paths, *blobs))
    assert (cache / "models--tiny-org--Tiny-MoE-GGUF" / "refs" / "main").exists()  # refs are huggingface_hub's
    with pytest.raises(StoreError):
        store.resolve(pulled.name)


def test_rm_keeps_a_shard_huggingface_hub_downloaded_before(hub):
    cache = hubmod.HubEnv.from_environ().cache_dir
    commit = hub.repos[TINY_REPO].commit
    theirs = Path(hf_hub_download(TINY_REPO, SHARDS[0], cache_dir=cache, endpoint=hub.url, token=False, revision=commit))
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")
    removal = store.plan_removal(pulled.name)
    kept = dict(removal.keep)
    assert theirs in kept and theirs.resolve() in kept
    assert theirs not in removal.delete and pulled.paths[1] in removal.delete
    store.remove(removal)
    assert theirs.read_bytes() == hub.repos[TINY_REPO].files[SHARDS[0]].read_all()
    assert not os.path.lexists(pulled.paths[1])


def test_files_a_failed_pull_created_are_still_moecli_s_to_remove(hub):
    hub.corrupt(SHARDS[1], 1000)
    with pytest.raises(Exception, match="verification"):
        app.pull_and_record(f"{TINY_REPO}:Q4_K_M")  # shard 1 is placed, shard 2 fails
    hub.faults.clear()
    pulled, _ = app.pull_and_record(f"{TINY_REPO}:Q4_K_M")  # shard 1 is found in the cache, checked, reused
    removal = store.plan_removal(pulled.name)
    assert set(removal.delete) == {*pulled.paths, *(p.resolve() for p in pulled.paths)}
    assert removal.keep == ()
