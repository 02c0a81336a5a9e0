"""Structured output: JSON schemas (and `json_object`) as GBNF grammars for llama.cpp's grammar
sampler, and the grammar of a forced tool call (`tool_choice` required or a named function) in
the wrapper format of the template's model around each tool's arguments schema.

The converter is llama-cpp-python's port of llama.cpp's json-schema-to-grammar
(`llama_cpp.llama_grammar.SchemaConverter`), kept as it is except for two things it lags
llama.cpp's C++ converter in: JSON strings exclude control characters (a raw newline in a string
is no JSON), and the schema keywords it would silently ignore are refused here by name
(`SchemaError`: the server answers 400), so that what the grammar admits validates."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from moecli.errors import BadInput
from moecli.templates.toolcalls import OutputFormat


class SchemaError(BadInput):
    """A JSON schema uses what the grammar cannot enforce, or is not a schema."""


# keywords the converter enforces, and those that only annotate
_ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "oneOf", "anyOf", "allOf", "$ref", "pattern", "format", "minLength", "maxLength",
}
_ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs", "definitions",
    "deprecated", "readOnly", "writeOnly", "$anchor",
}
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}

# llama.cpp's current JSON string character (common/json-schema-to-grammar.cpp)
_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def schema_problems(schema: Any, where: str = "") -> list[str]:
    """What in `schema` the grammar cannot enforce, as `keyword at /path` lines (empty: none)."""
    here = where or "/"
    if isinstance(schema, bool):
        return [] if schema else [f"false schema at {here}"]
    if not isinstance(schema, Mapping):
        return [f"a {type(schema).__name__} where a schema belongs at {here}"]
    problems = [f"{key} at {here}" for key in schema if key not in _ENFORCED and key not in _ANNOTATIONS]
    kind = schema.get("type")
    for k in kind if isinstance(kind, list) else [kind] if kind is not None else []:
        if k not in _TYPES:
            problems.append(f"type {k!r} at {here}")
    fmt = schema.get("format")
    if fmt is not None and fmt not in _FORMATS:
        problems.append(f"format {fmt!r} at {here}")
    ref = schema.get("$ref")
    if ref is not None and not str(ref).startswith("#/"):
        problems.append(f"$ref {ref!r} (only local references) at {here}")
    if "pattern" in schema and not (kind in (None, "string")):
        problems.append(f"pattern on type {kind!r} at {here}")
    if "allOf" in schema and kind not in (None, "object"):
        problems.append(f"allOf on type {kind!r} at {here}")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            problems += schema_problems(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, list):
            for i, s in enumerate(sub):
                problems += schema_problems(s, f"{where}/{key}/{i}")
        elif isinstance(sub, Mapping):
            problems += schema_problems(sub, f"{where}/{key}")
    for key in ("prefixItems", "oneOf", "anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key) or ()):
            problems += schema_problems(sub, f"{where}/{key}/{i}")
    return problems


def _check(schema: Any, what: str) -> None:
    problems = schema_problems(schema)
    if problems:
        raise SchemaError(f"{what} uses what a grammar cannot enforce: {'; '.join(problems)}",
                          "leave those keywords out (or check the values after generation)")


def _converter():
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _visit(converter, schema: Any, name: str, what: str) -> str:
    """The rule for `schema` (named after `name`), added to the converter."""
    try:
        schema = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
        return converter.visit(schema, name)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SchemaError(f"{what} cannot be made a grammar: {exc or type(exc).__name__}",
                          "simplify the schema") from None


def _grammar(converter) -> str:
    if "char" in converter._rules:
        converter._rules["char"] = _CHAR
    return converter.format_grammar()


def json_schema_grammar(schema: Mapping[str, Any] | bool | None) -> str:
    """A GBNF grammar (root `root`) of the JSON values valid against `schema`; None: any JSON
    object (OpenAI's json_object)."""
    if schema is None:
        schema = {"type": "object"}
    _check(schema, "the JSON schema")
    converter = _converter()
    _visit(converter, schema, "", "the JSON schema")
    return _grammar(converter)


def response_format_grammar(response_format: Mapping[str, Any] | None) -> str | None:
    """The grammar for OpenAI's `response_format`: `{"type": "json_object"}` (llama.cpp also takes
    a `schema` in it), `{"type": "json_schema", "json_schema": {"schema": {...}}}`, or None /
    `{"type": "text"}` (no grammar)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_schema_grammar(response_format.get("schema"))
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec if "type" in spec or "properties" in spec else None)
        return json_schema_grammar(schema if schema is not None else {"type": "object"})
    raise SchemaError(f"response_format type {kind!r} is not text, json_object or json_schema", "")


# --- forced tool calls ------------------------------------------------------------------------------
def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a GBNF literal: "..." with \" \n \\ escapes


def _cls(c: str) -> str:
    return "\\" + c if c in "[]\\^-" else c


def _text_without(stop: str) -> str:
    """Text that does not contain the first two characters of `stop` in a row (so it cannot run
    into the closing tag)."""
    a, b = _cls(stop[0]), _cls(stop[1])
    return f"( [^{a}] | {_lit(stop[0])} [^{b}] )*"


def chosen_tools(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> list[Mapping[str, Any]] | None:
    """The tools a call must be one of: all for "required", the one named by
    `{"type": "function", "function": {"name": ...}}`, None for "auto" / "none" (no grammar)."""
    if tool_choice in (None, "auto", "none"):
        return None
    functions = [t.get("function", t) for t in tools or ()]
    if tool_choice == "required":
        if not functions:
            raise BadInput("tool_choice is required but no tools were given", "give tools, or tool_choice auto")
        return functions
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        found = [f for f in functions if f.get("name") == name]
        if not found:
            raise BadInput(f"tool_choice names {name!r}, which is not among the tools",
                           "name one of: " + ", ".join(str(f.get("name")) for f in functions))
        return found
    raise BadInput(f"tool_choice {tool_choice!r} is not auto, none, required or a function", "")


def _params(function: Mapping[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return dict(params)


def _is_str(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "string" and not (set(schema) & {"enum", "const"})


def _keyed_args(converter, function, prefix: str, item, what: str) -> str:
    """The parameters of an XML-style call (Qwen3-Coder's <parameter=K>, GLM's <arg_key>):
    required ones in order, then the optional ones, each optional; strings as raw text."""
    params = _params(function)
    props = params.get("properties") or {}
    required = set(params.get("required") or ())
    parts = []
    for i, (key, sub) in enumerate(sorted(props.items(), key=lambda kv: kv[0] not in required)):
        sub = sub if isinstance(sub, Mapping) else {}
        value = item["text"] if _is_str(sub) else _visit(converter, sub, f"{prefix}-{i}", what)
        rule = item["wrap"](key, value)
        parts.append(rule if key in required else f"( {rule} )?")
    return " ".join(parts) or '""'


def tool_call_grammar(fmt: OutputFormat, tools: Sequence[Mapping[str, Any]], tool_choice: Any, *,
                      parallel: bool = False, in_reasoning: bool = False) -> str | None:
    """The grammar of the output when a tool must be called (tool_choice "required" or a named
    function; None for "auto"/"none"): the template's own call format around each chosen tool's
    arguments schema, one call (or one or more with `parallel`). `in_reasoning`: the prompt opened
    a reasoning block, which the output may continue and must close first."""
    functions = chosen_tools(tools, tool_choice)
    if functions is None:
        return None
    if fmt.tools in ("none",):
        raise BadInput("this chat template has no tool-call format moecli can constrain",
                       "use tool_choice auto, or a template with tool calls (--chat-template-file)")
    converter = _converter()
    calls = []
    for n, function in enumerate(functions):
        name = str(function.get("name", ""))
        what = f"the parameters of tool {name!r}"
        _check(_params(function), what)
        if fmt.tools == "qwen3-coder":
            text = converter._add_rule("xml-text", _text_without("</"))
            item = {"text": text, "wrap": lambda k, v: f'{_lit(f"<parameter={k}>" + chr(10))} {v} '
                                                      f'{_lit(chr(10) + "</parameter>" + chr(10))}'}
            body = _keyed_args(converter, function, f"tool{n}-arg", item, what)
            call = f'{_lit("<tool_call>" + chr(10) + f"<function={name}>" + chr(10))} {body} ' \
                   f'{_lit("</function>" + chr(10) + "</tool_call>")}'
        elif fmt.tools == "glm":
            text = converter._add_rule("glm-text", _text_without("</"))
            item = {"text": text, "wrap": lambda k, v: f'{_lit(f"<arg_key>{k}</arg_key>" + chr(10) + "<arg_value>")} '
                                                      f'{v} {_lit("</arg_value>" + chr(10))}'}
            body = _keyed_args(converter, function, f"tool{n}-arg", item, what)
            call = f'{_lit("<tool_call>" + name + chr(10))} {body} {_lit("</tool_call>")}'
        else:
            args = _visit(converter, _params(function), f"tool{n}-args", what)
            if fmt.tools == "hermes":
                call = f'{_lit("<tool_call>" + chr(10) + json.dumps({"name": name})[:-1] + ", " + chr(34) + "arguments" + chr(34) + ": ")} ' \
                       f'{args} {_lit("}" + chr(10) + "</tool_call>")}'
            elif fmt.tools == "deepseek":
                call = f'{_lit("<｜tool▁call▁begin｜>" + name + "<｜tool▁sep｜>")} {args} {_lit("<｜tool▁call▁end｜>")}'
            elif fmt.tools == "mistral" and fmt.mistral_args:
                call = f'{_lit("[TOOL_CALLS]" + name + "[ARGS]")} {args}'
            elif fmt.tools == "mistral":
                call = f'{_lit("[TOOL_CALLS][" + json.dumps({"name": name})[:-1] + ", " + chr(34) + "arguments" + chr(34) + ": ")} ' \
                       f'{args} {_lit("}]")}'
            elif fmt.tools == "harmony":
                call = f'{_lit(f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>")} {args}'
            else:
                raise BadInput(f"tool-call format {fmt.tools} has no grammar", "")
        calls.append(converter._add_rule(f"call{n}", call))
    one = converter._add_rule("call", " | ".join(calls))
    if fmt.tools == "deepseek":
        many = f"{one} ( {one} )*" if parallel else one
        root = f'{_lit("<｜tool▁calls▁begin｜>")} {many} {_lit("<｜tool▁calls▁end｜>")}'
    elif parallel and fmt.tools != "harmony":
        sep = "" if fmt.tools == "mistral" else _lit("\n") + " "
        root = f"{one} ( {sep}{one} )*"
    else:
        root = one
    if in_reasoning and fmt.think:
        close = fmt.think[1]
        root = f'{_text_without(close)} {_lit(close)} [ \\n]* {root}'
    converter._rules["root"] = root
    return _grammar(converter)
