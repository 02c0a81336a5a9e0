"""Rendering a chat template: Jinja in jinja2's sandbox the way Hugging Face transformers and
llama-cpp-python run it (trim_blocks, lstrip_blocks, loop controls, `{% generation %}` passed
through, `tojson` as transformers writes it, `raise_exception`, `strftime_now`), with the messages
shaped as llama.cpp's server shapes them for a template (developer -> system, tool-call arguments
as objects, no null content beside tool calls). A template that fails is one `TemplateError` line
naming the template and the problem."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from moecli.templates.errors import TemplateError
from moecli.templates.llamachat import apply_builtin, builtin_source_hint

# llama.cpp's two textual patches of templates that raise on messages its server sends
# (common/chat.cpp, common_chat_templates_init): the same templates work the same way here.
_PATCHES = (
    ("<|channel|>", "in message.content or",
     "{%- if \"<|channel|>analysis<|message|>\" in message.content or "
     "\"<|channel|>final<|message|>\" in message.content %}", "{%- if false %}"),
    ("[TOOL_CALLS]", "if (message['content'] is none or",
     "{%- if (message['content'] is none or message['content'] == '' or "
     "message['content']|length == 0) and (message['tool_calls'] is not defined or "
     "message['tool_calls'] is none or message['tool_calls']|length == 0) %}", "{%- if false %}"),
)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys,
                      default=_jsonable)


def _jsonable(x: Any) -> Any:
    """What jinja2 hands tojson that minja would have made a list (`map`, `select` give generators)."""
    if hasattr(x, "__iter__") and not isinstance(x, (str, bytes)):
        return list(x)
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def _raise_exception(message: str):
    raise _TemplateRaised(message)


class _TemplateRaised(Exception):
    pass


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_ENV = None


def _environment():
    """One sandboxed environment for every template (compiling is what costs)."""
    global _ENV
    if _ENV is None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import SandboxedEnvironment

        class _Generation(jinja2.ext.Extension):  # transformers' {% generation %}: a no-op here
            tags = {"generation"}

            def parse(self, parser):
                parser.stream.skip(1)
                return parser.parse_statements(("name:endgeneration",), drop_needle=True)

        # SandboxedEnvironment (not the immutable one): several real templates build lists with
        # .append() in their own namespace; the messages they get are copies.
        env = SandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                   extensions=[_Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        _ENV = env
    return _ENV


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def shape_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as templates read them (copies; the caller's are untouched):
    `developer` is `system`; typed content parts are joined into text; an assistant message with
    tool calls has content "" rather than null, each call has `type` and its `function.arguments`
    as an object (parsed from OpenAI's JSON string, as llama.cpp does: templates iterate or
    `tojson` them); a tool result keeps `tool_call_id` and gets the `name` of its call when the
    client left it out."""
    shaped: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        m = copy.deepcopy(dict(message))
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            m["content"] = "".join(part.get("text", "") for part in content
                                   if isinstance(part, Mapping) and part.get("type", "text") == "text")
        calls = m.get("tool_calls")
        if calls:
            if m.get("content") is None:
                m["content"] = ""
            fixed = []
            for i, call in enumerate(calls):
                call = dict(call)
                function = dict(call.get("function") or {})
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    try:
                        parsed = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        parsed = None  # a template gets the string as it came
                    if isinstance(parsed, dict):
                        function["arguments"] = parsed
                call["function"] = function
                call.setdefault("type", "function")
                call.setdefault("id", f"call_{i}")
                names[call["id"]] = function.get("name", "")
                fixed.append(call)
            m["tool_calls"] = fixed
        if m.get("role") == "tool" and "name" not in m and m.get("tool_call_id") in names:
            m["name"] = names[m["tool_call_id"]]
        if m.get("content") is None and not calls:
            m["content"] = ""
        shaped.append(m)
    return shaped


def shape_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI tools as templates read them: `{"type": "function", "function": {name, description,
    parameters}}`, parameters defaulting to an empty object schema (llama.cpp's
    common_chat_tool_parameters)."""
    if not tools:
        return None
    out = []
    for tool in tools:
        tool = copy.deepcopy(dict(tool))
        function = dict(tool.get("function") or {})
        params = function.get("parameters")
        if not params:
            function["parameters"] = {"type": "object", "properties": {}}
        function.setdefault("description", "")
        out.append({"type": tool.get("type", "function"), "function": function})
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and how to render it: Jinja source (`source`), or one of llama.cpp's
    built-in templates by name (`builtin`, rendered by llama_chat_apply_template). `name` is what
    messages call it; `notice` is what the user is told once about how it was chosen."""

    name: str
    source: str | None = None
    builtin: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    notice: str | None = None
    _compiled: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.source is None) == (self.builtin is None):
            raise ValueError("a ChatTemplate has Jinja source or a built-in name, not both")

    @property
    def text(self) -> str:
        """What the template's markers are read from (tool-call and reasoning formats)."""
        if self.source is not None:
            return self.source
        return builtin_source_hint(self.builtin)

    def _template(self):
        if not self._compiled:
            import jinja2

            source = self.source
            for marker, needle, old, new in _PATCHES:
                if marker in source and needle in source:
                    source = source.replace(old, new)
            try:
                self._compiled.append(_environment().from_string(source))
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"chat template {self.name}: line {exc.lineno}: {_one_line(exc.message)}",
                                    "give another with --chat-template NAME or --chat-template-file PATH") from None
        return self._compiled[0]

    def check(self) -> None:
        """Compile it now (a syntax error is a TemplateError before the model is used)."""
        if self.source is not None:
            self._template()

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages` (OpenAI's shape), `tools` (OpenAI's), the assistant's
        turn opened when add_generation_prompt. Extra keyword arguments go to the template
        (enable_thinking, reasoning_effort, ...)."""
        shaped = shape_messages(messages)
        if self.builtin is not None:
            return apply_builtin(self.builtin, shaped, add_generation_prompt, name=self.name, tools=shape_tools(tools))
        template = self._template()
        now = datetime.now()
        context = {"datetime": now.strftime("%b %d %Y"), "date_string": now.strftime("%d %b %Y"), **kwargs,
                   "tools": shape_tools(tools), "add_generation_prompt": add_generation_prompt,
                   "bos_token": self.bos_token, "eos_token": self.eos_token}
        if context["tools"] is None:
            del context["tools"]  # `tools is defined` and `tools is not none` both say no
        first: Exception | None = None
        # What llama.cpp adapts to a template's capabilities, tried in its order when the plain
        # shape fails: the system prompt merged into the next message (a template without a system
        # role), then tool-call arguments as JSON strings (a template that concatenates them).
        for variant in (shaped, _system_merged(shaped), _string_arguments(shaped)):
            if variant is None:
                continue
            try:
                return template.render(messages=variant, **context)
            except Exception as exc:  # noqa: BLE001 - jinja2's errors and the template's own
                first = first or exc
        if isinstance(first, _TemplateRaised):
            raise TemplateError(f"chat template {self.name} refused the conversation: {_one_line(first)}",
                                "check the roles and order of the messages") from None
        raise TemplateError(f"chat template {self.name} failed: {type(first).__name__}: {_one_line(first)}",
                            "give another with --chat-template NAME or --chat-template-file PATH") from None


def _system_merged(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """llama.cpp's system_message_not_supported: the system prompt joins the next message."""
    if len(messages) < 2 or messages[0].get("role") != "system":
        return None
    first, second = messages[0], dict(messages[1])
    second["content"] = f"{first.get('content') or ''}\n{second.get('content') or ''}"
    return [second, *messages[2:]]


def _string_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Tool-call arguments as the JSON strings OpenAI sends."""
    if not any(m.get("tool_calls") for m in messages):
        return None
    out = copy.deepcopy(messages)
    for m in out:
        for call in m.get("tool_calls") or ():
            args = call["function"].get("arguments")
            if not isinstance(args, str):
                call["function"]["arguments"] = json.dumps(args, ensure_ascii=False)
    return out
