"""Where a chat request becomes a prompt and a reply becomes a message: the one place templates,
tool calls and structured output (issue 13) plug into the request path.

    render(engine, request) -> Rendered    messages -> the prompt text (the GGUF's template)
    ReplyParser(rendered)                  streamed text -> message deltas, and the whole message

Thinking (Qwen3's `<think>…</think>`) comes back as `reasoning_content` beside `content`
(llama-server's --reasoning-format deepseek), split by the chat REPL's own ThinkSplitter."""

from __future__ import annotations

from dataclasses import dataclass

from moecli.chat import ThinkSplitter, opens_thinking
from moecli.serve.api import ChatCompletionRequest


@dataclass(frozen=True)
class Rendered:
    prompt: str
    thinking: bool  # the prompt ends inside an open <think>: the reply starts thinking


def template_kwargs(request: ChatCompletionRequest) -> dict:
    kwargs = dict(request.chat_template_kwargs or {})
    if request.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", request.reasoning_effort)
        if request.reasoning_effort in ("none", "minimal") and "enable_thinking" not in kwargs:
            kwargs["enable_thinking"] = False
    return kwargs


def render(engine, request: ChatCompletionRequest) -> Rendered:
    messages = []
    for m in request.messages:
        item = m.model_dump(exclude_none=True)
        item["content"] = m.text()
        messages.append(item)
    prompt = engine.render_chat(messages, **template_kwargs(request))
    return Rendered(prompt, opens_thinking(prompt))


class ReplyParser:
    """Text pieces in, OpenAI message deltas out ({"reasoning_content": ...} / {"content": ...})."""

    def __init__(self, rendered: Rendered) -> None:
        self._splitter = ThinkSplitter(rendered.thinking)
        self._started = {"think": False, "answer": False}
        self.reasoning: list[str] = []
        self.content: list[str] = []

    def _deltas(self, parts) -> list[dict]:
        out = []
        for kind, text in parts:
            if not self._started[kind]:
                text = text.lstrip()  # the newline after <think> and the blank line after </think>
                if not text:
                    continue
                self._started[kind] = True
            (self.reasoning if kind == "think" else self.content).append(text)
            out.append({"reasoning_content" if kind == "think" else "content": text})
        return out

    def feed(self, piece: str) -> list[dict]:
        return self._deltas(self._splitter.feed(piece))

    def finish(self) -> list[dict]:
        return self._deltas(self._splitter.flush())

    def message(self) -> dict:
        out = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            out["reasoning_content"] = "".join(self.reasoning).rstrip()
        return out
