"""llama.cpp's built-in chat templates through its C API: the list of names
(llama_chat_builtin_templates) and rendering (llama_chat_apply_template). llama_cpp is imported
only when called (the engine has loaded it by then)."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping, Sequence
from typing import Any

from moecli.templates.errors import TemplateError

# a marker of each built-in's turn format, for choosing a tool-call parser (none of them has tools)
_MARKERS = {"chatml": "<|im_start|>", "gpt-oss": "<|channel|>", "kimi-k2": "<|im_middle|>"}


def builtin_source_hint(name: str | None) -> str:
    return "<tool_call>" + _MARKERS.get(name or "", "")  # tools are written in Hermes' words



def _capi():
    import llama_cpp.llama_cpp as _llama  # the engine has loaded it already

    return _llama


def builtin_names_from_llama_cpp() -> list[str]:
    """llama_chat_builtin_templates(), as llama.cpp lists them."""
    lib = _capi()
    n = lib.llama_chat_builtin_templates(None, 0)
    out = (ctypes.c_char_p * n)()
    lib.llama_chat_builtin_templates(out, n)
    return [out[i].decode() for i in range(n)]


def _tools_note(tools: Sequence[Mapping[str, Any]]) -> str:
    """What a built-in template (none of them knows tools) says of them: the tools in Hermes'
    words, so that the Hermes parser reads the calls back."""
    lines = ["You may call one or more functions to assist with the user query.",
             "You are provided with function signatures within <tools></tools> XML tags:", "<tools>"]
    lines += [json.dumps(t, ensure_ascii=False) for t in tools]
    lines += ["</tools>", "For each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:",
              '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>']
    return "\n".join(lines)


def _flatten(messages: Sequence[Mapping[str, Any]], tools) -> list[tuple[str, str]]:
    """(role, content) pairs for llama_chat_apply_template: tool calls written as Hermes'
    `<tool_call>` JSON in the assistant's content, tool results as `tool` turns."""
    pairs = []
    for m in messages:
        content = m.get("content") or ""
        for call in m.get("tool_calls") or ():
            f = call.get("function", {})
            content += ("\n" if content else "") + "<tool_call>\n" + json.dumps(
                {"name": f.get("name"), "arguments": f.get("arguments")}, ensure_ascii=False) + "\n</tool_call>"
        pairs.append((str(m.get("role", "user")), content))
    if tools:
        note = _tools_note(tools)
        if pairs and pairs[0][0] == "system":
            pairs[0] = ("system", pairs[0][1] + "\n\n" + note)
        else:
            pairs.insert(0, ("system", note))
    return pairs


def apply_builtin(builtin: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, *,
                  name: str, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """llama_chat_apply_template(builtin, messages): what llama.cpp makes of them."""
    lib = _capi()
    pairs = _flatten(messages, tools)
    keep = [(r.encode(), c.encode()) for r, c in pairs]
    array = (lib.llama_chat_message * max(1, len(keep)))(*[lib.llama_chat_message(r, c) for r, c in keep])
    size = 1024 + 2 * sum(len(r) + len(c) for r, c in keep)
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_chat_apply_template(builtin.encode(), array, len(keep), add_generation_prompt, buf, size)
        if n < 0:
            raise TemplateError(f"chat template {name}: llama.cpp cannot render this conversation with it",
                                "give another with --chat-template NAME or --chat-template-file PATH")
        if n <= size:
            return buf.raw[:n].decode("utf-8", "replace")
        size = n + 1
    raise TemplateError(f"chat template {name}: llama.cpp's output did not fit", "")


