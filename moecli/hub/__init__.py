"""`moecli pull` and Hub models not pulled yet (see moecli.hub.pull); the byte transfer is
moecli.hub.transfer."""

from moecli.hub.pull import (
    DEFAULT_ENDPOINT,
    Alias,
    Candidate,
    Choice,
    Fits,
    HubEnv,
    HubFile,
    ModelRef,
    Progress,
    Pulled,
    RemoteGGUF,
    RepoListing,
    check_gguf,
    choose,
    download,
    gated_without_token,
    gguf_candidates,
    is_model_file,
    list_repo,
    load_aliases,
    parse_ref,
    pull,
    quant_of,
    remote_gguf,
    storage_folder,
)
from moecli.hub.transfer import PARTIAL_SUFFIX, Digest, TransferOptions

__all__ = [
    "DEFAULT_ENDPOINT", "PARTIAL_SUFFIX", "Alias", "Candidate", "Choice", "Digest", "Fits", "HubEnv", "HubFile",
    "ModelRef", "Progress", "Pulled", "RemoteGGUF", "RepoListing", "TransferOptions", "check_gguf", "choose",
    "download", "gated_without_token", "gguf_candidates", "is_model_file", "list_repo", "load_aliases",
    "parse_ref", "pull", "quant_of", "remote_gguf", "storage_folder",
]
