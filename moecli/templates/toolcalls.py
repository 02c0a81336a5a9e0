"""The model's output read back: content, reasoning and tool calls, for the tool-call formats of
the MoE families people run (llama.cpp's common/chat.cpp and tests/test-chat.cpp are the
reference for each). Pure and incremental: feed the text as it streams, get deltas out.

    hermes        Hermes / Qwen2.5 / Qwen3:  <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    qwen3-coder   Qwen3-Coder / Qwen3.5 / Qwen3.6 (and Seed-OSS, Nemotron 3):
                  <tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>
    harmony       gpt-oss: <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>
    deepseek      DeepSeek V3.1 (and R1): <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}
                  <｜tool▁call▁end｜><｜tool▁calls▁end｜>
    glm           GLM-4.5 / 4.6 / 4.7: <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>
    mistral       [TOOL_CALLS]NAME[ARGS]{...} (and [CALL_ID]ID), or [TOOL_CALLS][{"name": ..., ...}] (Nemo)
    none          content (and reasoning) only

Reasoning is `<think>…</think>` (or Mistral's `[THINK]…[/THINK]`, or harmony's analysis channel);
a prompt that opens the thinking itself makes the stream start inside it (`in_reasoning`).

A call that does not parse (bad JSON, a block never closed) comes back as content, as written."""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("hermes", "qwen3-coder", "harmony", "deepseek", "glm", "mistral", "none")


@dataclass(frozen=True)
class ToolCall:
    """One call, as OpenAI's API returns it: arguments are a JSON string."""

    name: str
    arguments: str
    id: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    """A call as it streams (OpenAI's `delta.tool_calls[i]`). Calls are given whole here, once
    each: the first delta of index i carries its id, name and all of its arguments."""

    index: int
    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Delta:
    """What one feed() (or finish()) adds."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


@dataclass
class Parsed:
    """The whole message."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    """9 letters and digits: the one shape every template accepts (Mistral's demand it)."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=9))


@dataclass(frozen=True)
class OutputFormat:
    """How a template's model writes tool calls and reasoning."""

    tools: str  # one of FORMATS
    think: tuple[str, str] | None = ("<think>", "</think>")
    mistral_args: bool = True  # mistral: NAME[ARGS]{...} (v11+) rather than a JSON list (v3, Nemo)

    @property
    def needs_special_tokens(self) -> bool:
        """Whether the markers are control tokens that only show when the engine renders special
        tokens (harmony's <|channel|>, Mistral's [TOOL_CALLS], DeepSeek's ｜ markers)."""
        return self.tools in ("harmony", "mistral", "deepseek")


def detect_format(template_text: str) -> OutputFormat:
    """Which format a chat template's model writes, from the template's own markers (as
    llama.cpp tells them apart)."""
    t = template_text
    if "[THINK]" in t:
        think: tuple[str, str] | None = ("[THINK]", "[/THINK]")
    elif "<think>" in t or "</think>" in t:
        think = ("<think>", "</think>")
    else:
        think = None
    if "<|channel|>" in t and "<|message|>" in t:
        return OutputFormat("harmony", None)
    if "tool▁calls▁begin" in t:
        return OutputFormat("deepseek", think or ("<think>", "</think>"))
    if "<arg_key>" in t:
        return OutputFormat("glm", think)
    if "<function=" in t and "<parameter=" in t:
        return OutputFormat("qwen3-coder", think)
    if "[TOOL_CALLS]" in t:
        return OutputFormat("mistral", think, mistral_args="[ARGS]" in t)
    if "<tool_call>" in t:
        return OutputFormat("hermes", think)
    return OutputFormat("none", think)


def opens_reasoning(fmt: OutputFormat, prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open reasoning block (Qwen3.5's, GLM-4.7's and
    DeepSeek's generation prompts open `<think>` themselves)."""
    if not fmt.think:
        return False
    open_, close = fmt.think
    return prompt.rfind(open_) > prompt.rfind(close)


# --- values --------------------------------------------------------------------------------------
def _schemas(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out = {}
    for tool in tools or ():
        f = tool.get("function", tool)
        out[f.get("name", "")] = (f.get("parameters") or {}).get("properties") or {}
    return out


def _is_string_param(schema: Mapping[str, Any] | None) -> bool:
    if not schema:
        return False
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and kind == ["string"]) or (
        "enum" in schema and all(isinstance(v, str) for v in schema["enum"]))


def _xml_value(raw: str, schema: Mapping[str, Any] | None) -> Any:
    """An XML-style parameter's text as a JSON value: a string parameter stays text; others are
    JSON where they parse (1 -> 1, true -> true), text otherwise (llama.cpp does the same)."""
    if _is_string_param(schema):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _arguments_text(value: Any) -> str | None:
    """OpenAI's arguments string for a parsed object (a string is taken when it is JSON of one)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _json_end(text: str, start: int) -> int | None:
    """Where the JSON object or array at text[start] ends (exclusive), or None if it has not yet;
    -1 when text[start] opens no object or array."""
    if start >= len(text) or text[start] not in "{[":
        return -1
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


# --- the block formats: what a call looks like from its start marker -------------------------------
_WAIT = "wait"  # the block is not complete yet


def _scan_hermes(buf: str, final: bool, schemas) -> tuple[Any, int]:
    end = buf.find("</tool_call>")
    if end < 0 and not final:
        return _WAIT, 0
    body = buf[len("<tool_call>"): end if end >= 0 else len(buf)]
    consumed = end + len("</tool_call>") if end >= 0 else len(buf)
    try:
        obj = json.loads(body)
    except ValueError:
        return None, consumed
    objs = obj if isinstance(obj, list) else [obj]
    calls = []
    for o in objs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            return None, consumed
        args = _arguments_text(o.get("arguments", o.get("parameters", {})))
        if args is None:
            return None, consumed
        calls.append((o["name"], args, None))
    return calls, consumed


_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


def _scan_xml(buf: str, final: bool, schemas) -> tuple[Any, int]:
    wrapped = buf.startswith("<tool_call>")
    end_fn = buf.find("</function>")
    if end_fn < 0:
        return (_WAIT, 0) if not final else (None, len(buf))
    consumed = end_fn + len("</function>")
    rest = buf[consumed:]
    m = re.match(r"\s*</tool_call>", rest)
    if m:
        consumed += m.end()
    elif not final and ("</tool_call>".startswith(rest.lstrip()) or not rest.strip()):
        return _WAIT, 0  # the closing tag may follow
    elif wrapped and not final:
        return None, consumed
    fn = _FUNCTION.search(buf, 0, consumed)
    if not fn or (wrapped and buf[len("<tool_call>"):fn.start()].strip()):
        return None, consumed
    name = fn.group(1).strip()
    props = schemas.get(name, {})
    args = {}
    for p in _PARAMETER.finditer(fn.group(2)):
        raw = p.group(2)
        raw = raw[1:] if raw.startswith("\n") else raw
        raw = raw[:-1] if raw.endswith("\n") else raw
        key = p.group(1).strip()
        args[key] = _xml_value(raw, props.get(key))
    return [(name, json.dumps(args, ensure_ascii=False), None)], consumed


_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _scan_glm(buf: str, final: bool, schemas) -> tuple[Any, int]:
    end = buf.find("</tool_call>")
    if end < 0 and not final:
        return _WAIT, 0
    consumed = end + len("</tool_call>") if end >= 0 else len(buf)
    body = buf[len("<tool_call>"): end if end >= 0 else len(buf)]
    at = body.find("<arg_key>")
    name = (body if at < 0 else body[:at]).strip()
    if not name or "<" in name or "{" in name:
        return None, consumed
    props = schemas.get(name, {})
    args = {m.group(1).strip(): _xml_value(m.group(2), props.get(m.group(1).strip()))
            for m in _ARG.finditer(body, max(at, 0))}
    if at >= 0 and _ARG.sub("", body[at:]).strip():
        return None, consumed  # something that is no key/value pair
    return [(name, json.dumps(args, ensure_ascii=False), None)], consumed


_DS_BEGIN, _DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.S)


def _scan_deepseek(buf: str, final: bool, schemas) -> tuple[Any, int]:
    end = buf.find(_DS_END)
    if end < 0 and not final:
        return _WAIT, 0
    consumed = end + len(_DS_END) if end >= 0 else len(buf)
    body = buf[:end if end >= 0 else len(buf)]
    calls = []
    for m in _DS_CALL.finditer(body):
        name, args = m.group(1).strip(), m.group(2)
        if name == "function":  # R1: function<｜tool▁sep｜>NAME\n```json\n{...}\n```
            r1 = re.match(r"\s*([^\n]+)\n```json\n(.*)\n```\s*$", args, re.S)
            if not r1:
                return None, consumed
            name, args = r1.group(1).strip(), r1.group(2)
        text = _arguments_text(args)
        if text is None:
            return None, consumed
        calls.append((name, text, None))
    if not calls or _DS_CALL.sub("", body).replace(_DS_BEGIN, "").strip():
        return None, consumed
    return calls, consumed


def _scan_mistral(buf: str, final: bool, schemas) -> tuple[Any, int]:
    i = len("[TOOL_CALLS]")
    while i < len(buf) and buf[i] in " \n":
        i += 1
    if i >= len(buf):
        return (_WAIT, 0) if not final else (None, len(buf))
    if buf[i] == "[":  # v3 / Nemo: a JSON list of {"name", "arguments", "id"}
        end = _json_end(buf, i)
        if end is None:
            return (_WAIT, 0) if not final else (None, len(buf))
        try:
            items = json.loads(buf[i:end])
        except ValueError:
            return None, end
        calls = []
        for o in items if isinstance(items, list) else ():
            args = _arguments_text(o.get("arguments", {})) if isinstance(o, dict) else None
            if args is None or not isinstance(o.get("name"), str):
                return None, end
            calls.append((o["name"], args, o.get("id") if isinstance(o.get("id"), str) else None))
        return (calls or None), end
    at = buf.find("[ARGS]", i)
    if at < 0:  # a name (and [CALL_ID]) is short and on one line: wait for [ARGS] that long
        if not final and "\n" not in buf[i:] and len(buf) - i < 256:
            return _WAIT, 0
        return None, len(buf)
    head = buf[i:at]
    name, _, call_id = head.partition("[CALL_ID]")
    start = at + len("[ARGS]")
    if start >= len(buf) and not final:
        return _WAIT, 0
    end = _json_end(buf, start)
    if end is None:
        return (_WAIT, 0) if not final else (None, len(buf))
    if end < 0 or not name.strip() or re.search(r"\s", name.strip()):
        return None, max(end, start)
    args = _arguments_text(buf[start:end])
    if args is None:
        return None, end
    return [(name.strip(), args, call_id.strip() or None)], end


_BLOCKS = {
    "hermes": (("<tool_call>",), _scan_hermes),
    "qwen3-coder": (("<tool_call>", "<function="), _scan_xml),
    "glm": (("<tool_call>",), _scan_glm),
    "deepseek": ((_DS_BEGIN, "<｜tool▁call▁begin｜>"), _scan_deepseek),
    "mistral": (("[TOOL_CALLS]",), _scan_mistral),
    "none": ((), None),
}


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper start of one of the markers."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


class OutputParser:
    """Incremental parser of one reply. feed(text) -> Delta; finish() -> the last Delta;
    `parsed` the whole message so far. parse_tools=False (tool_choice none) keeps every call as
    content; reasoning=False keeps the reasoning in the content, tags and all."""

    def __init__(self, fmt: OutputFormat, *, tools: Sequence[Mapping[str, Any]] | None = None,
                 in_reasoning: bool = False, parse_tools: bool = True, reasoning: bool = True) -> None:
        if fmt.tools == "harmony":
            self._impl: _Harmony | _Blocks = _Harmony(parse_tools)
        else:
            self._impl = _Blocks(fmt, _schemas(tools), in_reasoning and reasoning and fmt.think is not None,
                                 parse_tools, reasoning)
        self.parsed = Parsed()

    def feed(self, text: str) -> Delta:
        return self._add(self._impl.feed(text, final=False))

    def finish(self) -> Delta:
        return self._add(self._impl.feed("", final=True))

    def _add(self, delta: Delta) -> Delta:
        self.parsed.content += delta.content
        self.parsed.reasoning += delta.reasoning
        self.parsed.tool_calls += [ToolCall(c.name, c.arguments, c.id) for c in delta.tool_calls]
        return delta


def parse_output(fmt: OutputFormat, text: str, **kwargs) -> Parsed:
    """The whole reply at once (what a non-streamed response returns)."""
    parser = OutputParser(fmt, **kwargs)
    parser.feed(text)
    parser.finish()
    return parser.parsed


class _Blocks:
    def __init__(self, fmt: OutputFormat, schemas, in_reasoning: bool, parse_tools: bool, reasoning: bool) -> None:
        self.fmt = fmt
        self.schemas = schemas
        self.buf = ""
        self.state = "reasoning" if in_reasoning else "content"
        self.starts, self.scan = _BLOCKS[fmt.tools] if parse_tools else ((), None)
        self.think = fmt.think if reasoning else None
        self.seen_text = False  # content other than whitespace was given (a <think> may open only before)
        self.after_reasoning = in_reasoning  # strip the blank lines after </think>
        self.n_calls = 0

    def feed(self, text: str, final: bool) -> Delta:
        self.buf += text
        out = Delta()
        while True:
            if self.state == "reasoning":
                close = self.think[1]
                at = self.buf.find(close)
                if at < 0:
                    keep = 0 if final else _partial_suffix(self.buf, [close])
                    out.reasoning += self.buf[:len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return out
                out.reasoning += self.buf[:at]
                self.buf = self.buf[at + len(close):]
                self.state, self.after_reasoning = "content", True
                continue
            if self.state == "call":
                calls, consumed = self.scan(self.buf, final, self.schemas)
                if calls is _WAIT:
                    return out
                if calls:
                    for name, args, call_id in calls:
                        out.tool_calls.append(ToolCallDelta(self.n_calls, call_id or new_call_id(), name, args))
                        self.n_calls += 1
                else:  # malformed: the text as written is content
                    consumed = consumed or len(self.buf)
                    out.content += self.buf[:consumed]
                    self.seen_text = True
                self.buf = self.buf[consumed:]
                self.state = "content"
                if self.n_calls and calls:
                    self.buf = self.buf.lstrip()  # the whitespace between and after calls is no content
                if final and not self.buf:
                    return out
                continue
            # content: the next start of a call, or of reasoning
            markers = list(self.starts)
            if self.think and not self.seen_text:
                markers.append(self.think[0])
            if self.after_reasoning or (self.n_calls and not self.seen_text):
                stripped = self.buf.lstrip()
                if not stripped and not final:
                    return out
                self.buf, self.after_reasoning = stripped, False
            hits = [(self.buf.find(m), m) for m in markers if self.buf.find(m) >= 0]
            if hits:
                at, marker = min(hits)
                if at:
                    out.content += self.buf[:at]
                    self.seen_text = self.seen_text or bool(self.buf[:at].strip())
                if self.think and marker == self.think[0] and not self.seen_text:
                    self.buf = self.buf[at + len(marker):]
                    self.state = "reasoning"
                    out.content = out.content.rstrip() if not out.content.strip() else out.content
                    continue
                self.buf = self.buf[at:]
                self.state = "call"
                continue
            keep = 0 if final else _partial_suffix(self.buf, markers)
            piece = self.buf[:len(self.buf) - keep]
            if self.think and not self.seen_text and not piece.strip() and not final:
                return out  # leading whitespace: a <think> may still come
            out.content += piece
            self.seen_text = self.seen_text or bool(piece.strip())
            self.buf = self.buf[len(self.buf) - keep:]
            return out


class _Harmony:
    """gpt-oss: messages of `[ to=R]<|channel|>C[ to=R][ <|constrain|>T]<|message|>BODY` ended by
    <|end|>, <|call|> or <|return|>, the next one opened by <|start|>assistant. The analysis
    channel is reasoning; final (and commentary without a recipient) is content; a recipient
    functions.NAME is a tool call whose body is the arguments; other recipients (the built-in
    python and browser tools) are dropped, as llama.cpp does."""

    ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")

    def __init__(self, parse_tools: bool) -> None:
        self.buf = ""
        self.state = "header"
        self.kind = "content"
        self.recipient = ""
        self.parse_tools = parse_tools
        self.n_calls = 0

    def feed(self, text: str, final: bool) -> Delta:
        self.buf += text
        out = Delta()
        while True:
            if self.state == "header":
                if self.buf.startswith("<|start|>"):
                    self.buf = self.buf[len("<|start|>"):]
                if self.buf.startswith("assistant"):
                    self.buf = self.buf[len("assistant"):]
                at = self.buf.find("<|message|>")
                if at < 0:
                    if final and self.buf.strip():
                        out.content += self.buf if not self.buf.startswith(("<|channel|>", " to=")) else ""
                        self.buf = ""
                    return out
                header, self.buf = self.buf[:at], self.buf[at + len("<|message|>"):]
                to = re.search(r"to=([^\s<]+)", header)
                channels = re.findall(r"<\|channel\|>(\w+)", header)
                channel = channels[-1] if channels else "final"
                self.recipient = to.group(1) if to and to.group(1) != "assistant" else ""
                if self.recipient.startswith("functions.") and self.parse_tools:
                    self.kind = "call"
                elif self.recipient:
                    self.kind = "drop"
                else:
                    self.kind = "reasoning" if channel == "analysis" else "content"
                self.state = "body"
                continue
            hits = [(self.buf.find(m), m) for m in self.ENDS if self.buf.find(m) >= 0]
            if not hits and not final:
                if self.kind in ("content", "reasoning"):
                    keep = _partial_suffix(self.buf, self.ENDS)
                    setattr(out, self.kind, getattr(out, self.kind) + self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                return out
            at, marker = min(hits) if hits else (len(self.buf), "")
            body = self.buf[:at]
            self.buf = self.buf[at + (len(marker) if marker != "<|start|>" else 0):]
            if self.kind in ("content", "reasoning"):
                setattr(out, self.kind, getattr(out, self.kind) + body)
            elif self.kind == "call":
                args = _arguments_text(body)
                if args is None:
                    out.content += body
                else:
                    name = self.recipient[len("functions."):]
                    out.tool_calls.append(ToolCallDelta(self.n_calls, new_call_id(), name, args))
                    self.n_calls += 1
            self.state = "header"
            if final and not self.buf:
                return out
