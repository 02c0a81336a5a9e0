"""`moecli pull` and Hub models not pulled yet: from what the user typed to verified GGUF files in
the Hugging Face cache.

    parse_ref("unsloth/Qwen3.6-35B-A3B-GGUF:Q4_K_M")   refs       what was asked (aliases expanded)
    list_repo(ref) -> RepoListing                      listing    the repo's GGUF models
    choose(listing, ref, fits) -> Choice               listing    the tag asked, or the largest that fits
    remote_gguf(candidate) -> RemoteGGUF               remote     its headers, by range requests
    download(candidate, ...) -> Pulled                 pull       resumable, verified, into the cache
    pull(ref, fits=..., on_choice=..., ...) -> Pulled  pull       all of it

with the cache's layout in `cache`, the byte transfer in `transfer`, the environment (HF_ENDPOINT,
HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE) in `env` and every failure's one line in `errors`.
hub imports neither moecli.models nor moecli.store: the caller says whether a name is a local file
and records what was pulled (moecli.models.pull_and_record).
"""

from moecli.hub.cache import PARTIAL_SUFFIX, storage_folder
from moecli.hub.env import DEFAULT_ENDPOINT, HubEnv
from moecli.hub.errors import gated_without_token
from moecli.hub.listing import (
    Candidate,
    Choice,
    Fits,
    HubFile,
    RepoListing,
    choose,
    gguf_candidates,
    is_model_file,
    list_repo,
    quant_of,
)
from moecli.hub.pull import CachedFile, Progress, Pulled, check_gguf, download, missing_bytes, pull
from moecli.hub.refs import Alias, ModelRef, load_aliases, parse_ref
from moecli.hub.remote import RemoteGGUF, remote_gguf
from moecli.hub.transfer import Digest, TransferOptions

__all__ = [
    "DEFAULT_ENDPOINT", "PARTIAL_SUFFIX", "Alias", "CachedFile", "Candidate", "Choice", "Digest", "Fits", "HubEnv", "HubFile",
    "ModelRef", "Progress", "Pulled", "RemoteGGUF", "RepoListing", "TransferOptions", "check_gguf", "choose",
    "download", "gated_without_token", "missing_bytes", "gguf_candidates", "is_model_file", "list_repo", "load_aliases",
    "parse_ref", "pull", "quant_of", "remote_gguf", "storage_folder",
]
