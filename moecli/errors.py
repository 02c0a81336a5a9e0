"""One exception family: every error a user can cause or fix carries a one-line message and a hint.

The CLI catches `MoecliError` at the top, prints `error: <message>` and the hint on one line each,
and exits non-zero. Anything else is a bug and shows a traceback (always with `MOECLI_DEBUG=1`).
"""

from __future__ import annotations


class MoecliError(Exception):
    """A failure the user can understand and act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInput(MoecliError):
    """An option, unit, profile or name the user typed is not valid."""

    exit_code = 2


class ModelFileError(MoecliError):
    """A GGUF file is missing, not GGUF, truncated, corrupt, or of an unknown architecture."""


class NotMoE(MoecliError):
    """An MoE-only tool was asked of a dense model."""


class DoesNotFit(MoecliError):
    """Nothing the planner could give up makes the model fit the machine."""


class EngineError(MoecliError):
    """llama.cpp refused to load the model or to create a context."""


class EngineLost(EngineError):
    """llama.cpp's context cannot go on (an RPC worker it uses stopped answering): nothing more can
    be computed in this process. `workers`: the endpoints that no longer answer (or, where none can
    be told apart, all of them)."""

    def __init__(self, message: str, hint: str = "", workers: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.workers = workers


class HubError(MoecliError):
    """The Hugging Face Hub (or a mirror) could not give what was asked."""


class DownloadError(MoecliError):
    """A transfer failed, was interrupted, or did not verify."""


class DiskSpaceError(MoecliError):
    """Not enough free disk for what must be written."""


class StoreError(MoecliError):
    """The local model store has no such model, or refuses an operation."""
