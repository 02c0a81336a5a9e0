"""`moecli serve` with tools and structured output (issue 13): a real server process with the demo
model (random weights, its Qwen template's Hermes <tool_call> format), driven by the `openai`
client. The demo never closes a string of its own: schemas bound their strings (maxLength) and
arrays, and max_tokens is bounded, so every generation ends."""

from __future__ import annotations

import json

import pytest
from test_serve import USER, home, raw, start  # noqa: F401 - `home` is a fixture

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 16},
                                                "days": {"type": "integer"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, home):  # noqa: F811
    s = start(tmp_path_factory.mktemp("serve-tools"), "-np", "2", home=home)
    yield s
    s.stop()


def _valid_call(name: str, arguments: str) -> None:
    assert name in SCHEMAS, name
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_returns_a_call_that_validates(server):
    c = server.client()
    for seed in range(3):
        r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice="required", seed=seed,
                                      max_tokens=200)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls
        assert len(calls) == 1 and calls[0].type == "function" and calls[0].id
        _valid_call(calls[0].function.name, calls[0].function.arguments)


def test_required_streams_openai_tool_call_deltas(server):
    c = server.client()
    for seed in range(3):
        calls: dict[int, dict] = {}
        firsts, finish = [], None
        for chunk in c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice="required",
                                               seed=seed, max_tokens=200, stream=True):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                if d.index not in calls:
                    firsts.append(d)
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
                calls[d.index]["arguments"] += d.function.arguments or ""
        assert finish == "tool_calls"
        assert len(calls) == 1
        first = firsts[0]
        assert first.id and first.type == "function" and first.function.name
        _valid_call(calls[0]["name"], calls[0]["arguments"])


def test_a_named_function_is_the_one_called(server):
    c = server.client()
    for stream in (False, True):
        r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, seed=1, max_tokens=200, stream=stream,
                                      tool_choice={"type": "function", "function": {"name": "get_time"}})
        if stream:
            name, args, finish = None, "", None
            for chunk in r:
                for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    name = name or d.function.name
                    args += d.function.arguments or ""
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        else:
            call = r.choices[0].message.tool_calls[0]
            name, args, finish = call.function.name, call.function.arguments, r.choices[0].finish_reason
        assert name == "get_time" and finish == "tool_calls"
        _valid_call(name, args)


def test_json_schema_validates_over_20_seeds(server):
    c = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for seed in range(20):
        r = c.chat.completions.create(model="x", messages=USER, response_format=fmt, seed=seed, max_tokens=200)
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_json_object_is_json(server):
    c = server.client()
    ended = 0
    for seed in range(4):
        r = c.chat.completions.create(model="x", messages=USER, response_format={"type": "json_object"}, seed=seed,
                                      max_tokens=120)
        if r.choices[0].finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:  # cut at max_tokens: still the start of a JSON object
            assert r.choices[0].message.content.lstrip().startswith("{")
    assert ended, "no json_object reply ended within max_tokens"


def test_a_conversation_with_a_tool_result_continues(server):
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "abc123XYZ", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "abc123XYZ", "content": '{"temp_c": 21}'}]
    r = server.client().chat.completions.create(model="x", messages=messages, tools=TOOLS, max_tokens=16, seed=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    m = r.choices[0].message
    assert m.content is not None or m.tool_calls


def test_auto_and_none_never_fail(server):
    c = server.client()
    for choice in ("auto", "none"):
        for seed in range(3):
            r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice=choice, seed=seed,
                                          max_tokens=24)
            assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
            if choice == "none":
                assert not r.choices[0].message.tool_calls


def test_what_cannot_be_served_is_a_400_naming_it(server):
    c = server.client()
    bad = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="x", messages=USER, response_format=bad, max_tokens=8)
    assert "response_format" in str(e.value) and "minimum" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, max_tokens=8,
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "nope" in str(e.value)
    status, body = raw(server, "POST", "/v1/chat/completions", json.dumps(
        {"messages": USER, "response_format": {"type": "xml"}}).encode())
    assert status == 400 and "response_format" in body["error"]["message"]


# --- --chat-template / --chat-template-file -------------------------------------------------------------
def test_chat_template_flags(tmp_path, home):  # noqa: F811
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }}{% endfor %}{{ raise_exception('no tools here') }}")
    s = start(tmp_path, "-np", "1", "--chat-template-file", str(bad), home=home)
    try:
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model="x", messages=USER, max_tokens=4)
        message = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
        assert "no tools here" in message and "\n" not in message
    finally:
        s.stop()
    s = start(tmp_path, "-np", "1", "--chat-template", "chatml", home=home)
    try:
        r = s.client().chat.completions.create(model="x", messages=USER, max_tokens=4, seed=0)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        s.stop()
