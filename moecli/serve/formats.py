"""Where a chat request becomes a prompt and a reply becomes a message: the one place templates,
tool calls and structured output (issue 13) plug into the request path.

    render(engine, request) -> Rendered    messages and tools -> the prompt text (the template),
                                           the grammar (tool_choice required / named, response_format)
    ReplyParser(rendered)                  streamed text -> message deltas, and the whole message

Thinking comes back as `reasoning_content` beside `content` (llama-server's --reasoning-format
deepseek), tool calls as `tool_calls` (OpenAI's incremental deltas when streamed), both read by
moecli.templates.OutputParser in the format of the template's model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moecli.errors import MoecliError
from moecli.serve.api import ChatCompletionRequest
from moecli.serve.errors import bad_request
from moecli.templates import OutputFormat, OutputParser, opens_reasoning
from moecli.templates.grammar import response_format_grammar, tool_call_grammar


@dataclass(frozen=True)
class Rendered:
    prompt: str
    thinking: bool  # the prompt ends inside an open reasoning block: the reply starts thinking
    fmt: OutputFormat = field(default_factory=lambda: OutputFormat("none"))
    tools: list[dict[str, Any]] | None = None
    parse_tools: bool = True
    grammar: str | None = None  # what sampling must match (a forced tool call, a JSON schema)

    @property
    def special(self) -> bool:
        """Control tokens are written out: the markers of harmony, Mistral and DeepSeek calls."""
        return bool(self.tools) and self.parse_tools and self.fmt.needs_special_tokens


def template_kwargs(request: ChatCompletionRequest) -> dict:
    kwargs = dict(request.chat_template_kwargs or {})
    if request.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", request.reasoning_effort)
        if request.reasoning_effort in ("none", "minimal") and "enable_thinking" not in kwargs:
            kwargs["enable_thinking"] = False
    return kwargs


def _feature_error(feature: str, exc: MoecliError):
    hint = f" ({exc.hint})" if getattr(exc, "hint", "") else ""
    return bad_request(f"{feature}: {exc.message}{hint}")


def render(engine, request: ChatCompletionRequest) -> Rendered:
    """The prompt and grammar of a chat request; an ApiError 400 for what cannot be served (a
    template that fails, a schema feature the grammar cannot enforce, a tool_choice naming no tool)."""
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    tools = list(request.tools) if request.tools else None
    choice = request.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    fmt: OutputFormat = engine.output_format
    grammar = None
    if tools and choice != "none":
        try:
            # the grammar holds from the first token: no thinking before the call
            grammar = tool_call_grammar(fmt, tools, choice, parallel=bool(request.parallel_tool_calls),
                                        in_reasoning=False)
        except MoecliError as exc:
            raise _feature_error("tool_choice", exc) from None
    elif isinstance(choice, dict) or choice == "required":
        raise bad_request(f"tool_choice {choice!r} needs tools")
    if grammar is None:
        try:
            grammar = response_format_grammar(request.response_format)
        except MoecliError as exc:
            raise _feature_error("response_format", exc) from None
    kwargs = template_kwargs(request)
    if grammar is not None:
        kwargs["enable_thinking"] = False
    try:
        prompt = engine.render_chat(messages, tools=tools, **kwargs)
    except MoecliError as exc:
        raise bad_request(exc.message) from None
    thinking = opens_reasoning(fmt, prompt)
    if grammar is not None and thinking and tools and choice != "none":
        # the template opens <think> whatever enable_thinking says: the call grammar lets it close first
        grammar = tool_call_grammar(fmt, tools, choice, parallel=bool(request.parallel_tool_calls), in_reasoning=True)
    return Rendered(prompt, thinking, fmt, tools, parse_tools=(choice != "none"), grammar=grammar)


class ReplyParser:
    """Text pieces in, OpenAI message deltas out ({"reasoning_content": ...} / {"content": ...} /
    {"tool_calls": [...]})."""

    def __init__(self, rendered: Rendered) -> None:
        self._parser = OutputParser(rendered.fmt, tools=rendered.tools, in_reasoning=rendered.thinking,
                                    parse_tools=bool(rendered.tools) and rendered.parse_tools)
        self._started = {"reasoning": False, "content": False}

    def _text(self, kind: str, text: str) -> str:
        if not self._started[kind]:
            text = text.lstrip()  # the newline after <think> and the blank line after </think>
            if text:
                self._started[kind] = True
        return text

    def _deltas(self, d) -> list[dict]:
        out: list[dict] = []
        reasoning = self._text("reasoning", d.reasoning) if d.reasoning else ""
        if reasoning:
            out.append({"reasoning_content": reasoning})
        content = self._text("content", d.content) if d.content else ""
        if content:
            out.append({"content": content})
        for call in d.tool_calls:  # OpenAI's shape: id, type and name first, then the arguments
            out.append({"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": call.index, "function": {"arguments": call.arguments}}]})
        return out

    def feed(self, piece: str) -> list[dict]:
        return self._deltas(self._parser.feed(piece))

    def finish(self) -> list[dict]:
        return self._deltas(self._parser.finish())

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._parser.parsed.tool_calls)

    def message(self) -> dict:
        parsed = self._parser.parsed
        content = parsed.content.lstrip()
        out: dict = {"role": "assistant", "content": content if content or not parsed.tool_calls else None}
        if parsed.reasoning.strip():
            out["reasoning_content"] = parsed.reasoning.strip()
        if parsed.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in parsed.tool_calls]
        return out
