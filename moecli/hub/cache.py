"""The Hugging Face cache's layout, shared with huggingface_hub and `llama-server -hf`:

    $HF_HUB_CACHE/models--org--name/blobs/<sha256 or git blob id>        the bytes
                                    blobs/<digest>.downloadInProgress    a partial file (llama.cpp's name)
                                    snapshots/<commit>/<repo path>       -> ../../blobs/<digest>, relative
                                    refs/<branch>                        the commit
    $HF_HUB_CACHE/.locks/models--org--name/<digest>.lock                 huggingface_hub's lock

as huggingface_hub's file_download.py builds it (repo_folder_name, _create_symlink, the lock
beside the cache) and llama.cpp's common/download.cpp resumes it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from moecli.errors import DownloadError
from moecli.hub.env import HubEnv

# llama.cpp's downloader (common/download.cpp) keeps its partial file as `<blob>.downloadInProgress`
# and resumes it with Range requests too; sharing the name lets either tool finish the other's work.
PARTIAL_SUFFIX = ".downloadInProgress"


def storage_folder(env: HubEnv, repo: str) -> Path:
    """`models--org--name` in the hub cache, as huggingface_hub's repo_folder_name builds it."""
    return env.cache_dir / ("models--" + repo.replace("/", "--"))


@dataclass(frozen=True)
class RepoCache:
    """One repo's folder in the cache."""

    folder: Path

    @classmethod
    def of(cls, env: HubEnv, repo: str) -> RepoCache:
        return cls(storage_folder(env, repo))

    def blob(self, digest: str) -> Path:
        return self.folder / "blobs" / digest

    def pointer(self, commit: str, repo_path: str) -> Path:
        return self.folder / "snapshots" / commit / repo_path

    def lock(self, digest: str) -> Path:
        return self.folder.parent / ".locks" / self.folder.name / f"{digest}.lock"

    def read_ref(self, revision: str) -> str | None:
        """The commit refs/<branch> names now, or None."""
        try:
            return (self.folder / "refs" / revision).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/<branch> holds the commit (not written when the revision is the commit itself)."""
        if revision == commit:
            return
        ref = self.folder / "refs" / revision
        if ref.is_file() and ref.read_text().strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def partial_of(blob: Path) -> Path:
    return blob.with_name(blob.name + PARTIAL_SUFFIX)


def link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<path> -> ../../blobs/<digest>, relative, as huggingface_hub makes it."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError as exc:
        raise DownloadError(f"cannot link {pointer} to its blob: {exc.strerror or exc}",
                            "the Hugging Face cache needs symbolic links (on Windows: developer mode)") from exc


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would, once its folders are made)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
