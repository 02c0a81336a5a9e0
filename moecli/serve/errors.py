"""Errors in OpenAI's shape, `{"error": {"code", "message", "type"}}`, with llama-server's types."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    extra: dict | None = None

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": self.type, **(self.extra or {})}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def too_long(n_prompt: int, n_ctx: int) -> ApiError:
    """llama-server's words and type (server-context.cpp) for a prompt over the slot's context."""
    return ApiError(400, f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
                         "try increasing it", "exceed_context_size_error", {"n_prompt_tokens": n_prompt, "n_ctx": n_ctx})


def not_supported(endpoint: str, flag: str) -> ApiError:
    """llama-server's answer (501) on an endpoint it was started without."""
    return ApiError(501, f"This server does not support {endpoint} endpoint. Start it with `{flag}`", "not_supported_error")


UNAUTHORIZED = ApiError(401, "Invalid API Key", "authentication_error")
LOADING = ApiError(503, "Loading model", "unavailable_error")
