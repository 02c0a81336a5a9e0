"""Chat templates as real GGUFs ship them (llama.cpp's collection, tests/data/templates), the
tool-call and reasoning parsers on real model outputs (llama.cpp's tests/test-chat.cpp), and
structured output (JSON schema -> GBNF -> llama.cpp's grammar sampler on the demo model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moecli.errors import MoecliError
from moecli.templates import (
    ChatTemplate,
    OutputFormat,
    TemplateError,
    choose_template,
    detect_format,
    parse_output,
)
from moecli.templates.builtin import BUILTIN_NAMES, builtin_for
from moecli.templates.toolcalls import OutputParser

TEMPLATES = Path(__file__).parent / "data" / "templates"
ALL = sorted(TEMPLATES.glob("*.jinja"))

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}},
]
CALL_ID = "a1B2c3D4e"  # the shape of the ids moecli gives (Mistral's templates demand it)
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": '{"temp_c": 21}'},
]

# What the run over the whole collection gave (the count is in the project notes); a template
# that fails, fails with one line.
EXPECTED_FAILURES = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja",  # wants tools in Cohere's own shape
    "fireworks-ai-llama-3-firefunction-v2.jinja",  # wants a `functions` variable
    "google-gemma-2-2b-it.jinja",  # no system role, no tool role
}


def test_the_collection_is_here():
    assert len(ALL) >= 70
    assert sum(p.stat().st_size for p in ALL) < 700_000


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_every_template_renders_the_conversation_or_fails_in_one_line(path):
    template = ChatTemplate(name=path.name, source=path.read_text(), bos_token="<s>", eos_token="</s>")
    try:
        prompt = template.render(CONVERSATION, tools=TOOLS)
    except TemplateError as err:
        assert path.name in EXPECTED_FAILURES, str(err)
        assert path.name in err.message and "\n" not in err.message
        return
    assert path.name not in EXPECTED_FAILURES, "renders now: take it off the list"
    assert "Weather in Paris?" in prompt  # some templates drop tool turns (Phi-3.5, RWKV)


def test_a_template_error_is_one_line_naming_it():
    with pytest.raises(TemplateError, match=r"^chat template broken.jinja: line 1: "):
        ChatTemplate(name="broken.jinja", source="{% if %}").render([{"role": "user", "content": "x"}])
    raising = ChatTemplate(name="picky", source="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="^chat template picky refused the conversation: roles must alternate$"):
        raising.render([{"role": "user", "content": "x"}])
    assert issubclass(TemplateError, MoecliError)


def test_the_sandbox_holds():
    evil = ChatTemplate(name="evil", source="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError, match="evil"):
        evil.render([{"role": "user", "content": "x"}])


def test_messages_reach_the_template_in_its_shape():
    seen = ChatTemplate(name="t", source=(
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments.city }}]{% endfor %}|"
        "{% endfor %}"))
    out = seen.render([{"role": "developer", "content": "d"}, *CONVERSATION[1:]], add_generation_prompt=False)
    assert out == 'system:d|user:Weather in Paris?|assistant:[get_weather Paris]|tool:{"temp_c": 21}|'


# --- built-in templates ---------------------------------------------------------------------------
def test_the_builtin_names_are_llama_cpps():
    from moecli.templates.llamachat import builtin_names_from_llama_cpp

    assert sorted(builtin_names_from_llama_cpp()) == sorted(BUILTIN_NAMES)


@pytest.mark.parametrize("meta, name", [
    ({"general.architecture": "qwen3moe"}, "chatml"),
    ({"general.architecture": "llama", "tokenizer.ggml.pre": "llama-bpe"}, "llama3"),
    ({"general.architecture": "llama", "tokenizer.ggml.model": "llama"}, "llama2-sys"),
    ({"general.architecture": "gemma3"}, "gemma"),
    ({"general.architecture": "deepseek2", "general.name": "Kimi K2 Instruct"}, "kimi-k2"),
    ({"general.architecture": "gpt-oss"}, "gpt-oss"),
    ({"general.architecture": "glm4moe"}, "chatglm4"),
    ({"general.architecture": "olmoe"}, None),
])
def test_a_gguf_without_a_template_gets_its_architectures_builtin(meta, name):
    assert builtin_for(meta) == name


def test_the_choice_of_template():
    meta = {"general.architecture": "llama", "general.name": "Base", "tokenizer.ggml.pre": "llama-bpe"}
    chosen = choose_template(None, meta)
    assert chosen.builtin == "llama3" and "Base has no chat template" in chosen.notice
    assert "--chat-template-file" in chosen.notice
    assert choose_template("{{ 'x' }}", meta).source == "{{ 'x' }}"
    assert choose_template("{{ 'x' }}", meta, name="chatml").builtin == "chatml"
    with pytest.raises(TemplateError, match="not one of llama.cpp's built-in templates"):
        choose_template(None, meta, name="nope")
    olmoe = {"general.architecture": "olmoe", "general.name": "OLMoE"}
    with pytest.raises(TemplateError, match="OLMoE has no chat template, and llama.cpp has none built in") as err:
        choose_template(None, olmoe)
    assert "--chat-template-file" in err.value.hint and "--no-conversation" in err.value.hint
    assert choose_template(None, olmoe, knows_token=lambda t: True).builtin == "chatml"


def test_a_template_file(tmp_path):
    (tmp_path / "t.jinja").write_text("{{ messages[0].content }}!")
    assert choose_template(None, {}, path=tmp_path / "t.jinja").render([{"role": "user", "content": "hi"}]) == "hi!"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ 'j' }}"}))
    assert choose_template(None, {}, path=tmp_path / "tokenizer_config.json").render([]) == "j"
    with pytest.raises(TemplateError, match="cannot read the chat template"):
        choose_template(None, {}, path=tmp_path / "missing.jinja")
    (tmp_path / "bad.jinja").write_text("{% for %}")
    with pytest.raises(TemplateError, match="chat template bad.jinja: line 1"):
        choose_template(None, {}, path=tmp_path / "bad.jinja")


def test_builtin_rendering_through_llama_cpp():
    chatml = ChatTemplate(name="built-in chatml", builtin="chatml")
    out = chatml.render(CONVERSATION, tools=TOOLS)
    assert out.startswith("<|im_start|>system\nYou are terse.\n\nYou may call one or more functions")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in out
    assert out.endswith('<|im_start|>tool\n{"temp_c": 21}<|im_end|>\n<|im_start|>assistant\n')
    llama3 = ChatTemplate(name="built-in llama3", builtin="llama3").render([{"role": "user", "content": "hi"}])
    assert llama3 == "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


# --- tool-call parsers on real outputs ------------------------------------------------------------
SPECIAL = {"type": "function", "function": {"name": "special_function", "parameters": {
    "type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]}}}
SPECIAL_OPT = {"type": "function", "function": {"name": "special_function_with_opt", "parameters": {
    "type": "object", "properties": {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}, "required": ["arg1"]}}}
PYTHON = {"type": "function", "function": {"name": "python", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
FIX_TOOLS = [SPECIAL, SPECIAL_OPT, PYTHON]
CALL = [("special_function", {"arg1": 1})]
TWO = [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})]

# (template, in_reasoning, model output, content, reasoning, calls): outputs from llama.cpp's
# tests/test-chat.cpp (the model's own words, byte for byte), the template giving the format
FIXTURES = [
    # Hermes 2 Pro / Qwen 2.5 / Qwen3
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", False,
     '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>', "", "", CALL),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", False,
     'Hello, world!\nWhat\'s up?<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>',
     "Hello, world!\nWhat's up?", "", CALL),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", False,
     '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>', "", "", CALL),
    ("Qwen-Qwen3-0.6B.jinja", False,
     "<think>\nI'm\nthinking\n</think>\n\n<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}\n"
     "</tool_call>", "", "\nI'm\nthinking\n", CALL),
    ("Qwen-QwQ-32B.jinja", True, "Let me think about this...\n</think>\nThe answer is 42.",
     "The answer is 42.", "Let me think about this...\n", []),
    # Qwen3-Coder, Qwen3.5 (and 3.6): XML
    ("Qwen3-Coder.jinja", False,
     "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>",
     "", "", CALL),
    ("Qwen3-Coder.jinja", False,
     "Let me call it.\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>",
     "Let me call it.\n", "", CALL),
    ("Qwen3-Coder.jinja", False,
     "<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
     "<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n<parameter=arg2>\n2\n</parameter>\n"
     "</function>\n</tool_call>", "", "", TWO),
    ("Qwen3-Coder.jinja", False,
     "<tool_call>\n<function=python>\n<parameter=code>\ndef hello():\n    print(\"Hello, world!\")\n\nhello()\n"
     "</parameter>\n</function>\n</tool_call>", "", "",
     [("python", {"code": "def hello():\n    print(\"Hello, world!\")\n\nhello()"})]),
    ("Qwen3-Coder.jinja", False,
     "<tool_call>\n<function=python>\n<parameter=code>\n格\n</parameter>\n</function>\n</tool_call>", "", "",
     [("python", {"code": "格"})]),
    ("Qwen3.5-4B.jinja", True,
     "I'm\nthinking\n</think>\n\n<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n"
     "</function>\n</tool_call>", "", "I'm\nthinking\n", CALL),
    ("Qwen3.5-4B.jinja", True, "I'm\nthinking\n</think>\n\nHello, world!\nWhat's up?",
     "Hello, world!\nWhat's up?", "I'm\nthinking\n", []),
    # gpt-oss (harmony)
    ("openai-gpt-oss-120b.jinja", False, "<|channel|>final<|message|>Hello, world!\nWhat's up?",
     "Hello, world!\nWhat's up?", "", []),
    ("openai-gpt-oss-120b.jinja", False,
     "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>Hello, world!\n"
     "What's up?", "Hello, world!\nWhat's up?", "I'm\nthinking", []),
    ("openai-gpt-oss-120b.jinja", False, ' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
     "", "", CALL),
    ("openai-gpt-oss-120b.jinja", False, '<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}',
     "", "", CALL),
    ("openai-gpt-oss-120b.jinja", False,
     ' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}', "", "", CALL),
    ("openai-gpt-oss-120b.jinja", False,
     "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to=functions.special_function"
     '<|channel|>analysis<|message|>{"arg1": 1}', "", "I'm\nthinking", CALL),
    ("openai-gpt-oss-120b.jinja", False,
     "<|channel|>analysis<|message|>I will execute python to say hello<|end|><|start|>assistant to=container.exec"
     "<|channel|>commentary<|message|>python3 -c 'print(\"hello\")'", "", "I will execute python to say hello", []),
    ("openai-gpt-oss-120b.jinja", False,
     "<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
     "<|channel|>final<|message|>Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", "I'm\nthinking", []),
    # DeepSeek V3.1
    ("deepseek-ai-DeepSeek-V3.1.jinja", False,
     '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "XYZCITY"}<｜tool▁call▁end｜>'
     "<｜tool▁calls▁end｜>", "", "", [("get_time", {"city": "XYZCITY"})]),
    ("deepseek-ai-DeepSeek-V3.1.jinja", True,
     'REASONING</think>CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Paris"}'
     '<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
     "<｜tool▁calls▁end｜>", "CONTENT", "REASONING",
     [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})]),
    ("deepseek-ai-DeepSeek-V3.1.jinja", True, "REASONING</think>\nCONTENT", "CONTENT", "REASONING", []),
    # GLM-4.6, GLM-4.7
    ("GLM-4.6.jinja", False, "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>",
     "", "", CALL),
    ("GLM-4.7-Flash.jinja", True,
     "I'm\nthinking</think><tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>",
     "", "I'm\nthinking", CALL),
    ("GLM-4.7-Flash.jinja", False,
     "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call><tool_call>"
     "special_function_with_opt<arg_key>arg1</arg_key><arg_value>1</arg_value><arg_key>arg2</arg_key>"
     "<arg_value>2</arg_value></tool_call>", "", "", TWO),
    ("GLM-4.7-Flash.jinja", True, "Let me read the diff content.</think><tool_call>read_file_diff_md</tool_call>",
     "", "Let me read the diff content.", [("read_file_diff_md", {})]),
    # Mistral: Ministral 3 / Devstral ([ARGS]), Mistral Small 3.2 ([CALL_ID]), Nemo (JSON list)
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", False, '[TOOL_CALLS]special_function[ARGS]{"arg1":1}',
     "", "", CALL),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", False,
     "[THINK]I'm\nthinking[/THINK]" '[TOOL_CALLS]special_function[ARGS]{"arg1":1}', "", "I'm\nthinking", CALL),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", False,
     '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2": 2}',
     "", "", TWO),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", False,
     '[THINK]Let me think about [TOOL_CALLS]special_function[ARGS]{"arg1":1} and more[/THINK]'
     '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
     "", 'Let me think about [TOOL_CALLS]special_function[ARGS]{"arg1":1} and more', CALL),
    ("unsloth-mistral-Devstral-Small-2507.jinja", False,
     "Hello, world!\nWhat's up?[TOOL_CALLS]special_function[ARGS]{\"arg1\": 1}", "Hello, world!\nWhat's up?", "", CALL),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", False,
     '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'
     '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}', "", "", TWO),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", False,
     '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]', "", "", CALL),
]


def _format(name: str) -> OutputFormat:
    return detect_format((TEMPLATES / name).read_text())


def _calls(parsed):
    return [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls]


def _streamed(fmt, text, size, **kwargs):
    """Fed `size` characters at a time; what the deltas add up to."""
    parser = OutputParser(fmt, **kwargs)
    content = reasoning = ""
    calls = []
    for i in range(0, len(text), size):
        d = parser.feed(text[i:i + size])
        content, reasoning, calls = content + d.content, reasoning + d.reasoning, calls + d.tool_calls
    d = parser.finish()
    content, reasoning, calls = content + d.content, reasoning + d.reasoning, calls + d.tool_calls
    assert [c.index for c in calls] == list(range(len(calls)))
    assert (content, reasoning) == (parser.parsed.content, parser.parsed.reasoning)
    return content, reasoning, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("template, in_reasoning, text, content, reasoning, calls", FIXTURES,
                         ids=[f"{f[0].split('.jinja')[0]}-{i}" for i, f in enumerate(FIXTURES)])
def test_parsers_on_real_outputs_whole_and_streamed(template, in_reasoning, text, content, reasoning, calls):
    fmt = _format(template)
    parsed = parse_output(fmt, text, tools=FIX_TOOLS, in_reasoning=in_reasoning)
    assert (parsed.content, parsed.reasoning.strip(), _calls(parsed)) == (content, reasoning.strip(), calls)
    for size in (1, 2, 3, 5, 8, 13):
        got = _streamed(fmt, text, size, tools=FIX_TOOLS, in_reasoning=in_reasoning)
        assert (got[0], got[1].strip(), got[2]) == (content, reasoning.strip(), calls), f"chunks of {size}"


def test_the_formats_of_the_moe_families():
    assert {name: _format(name).tools for name in (
        "Qwen-Qwen3-0.6B.jinja", "Qwen3-Coder.jinja", "Qwen3.5-4B.jinja", "openai-gpt-oss-120b.jinja",
        "deepseek-ai-DeepSeek-V3.1.jinja", "GLM-4.6.jinja", "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        "meta-llama-Llama-3.1-8B-Instruct.jinja")} == {
        "Qwen-Qwen3-0.6B.jinja": "hermes", "Qwen3-Coder.jinja": "qwen3-coder", "Qwen3.5-4B.jinja": "qwen3-coder",
        "openai-gpt-oss-120b.jinja": "harmony", "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek",
        "GLM-4.6.jinja": "glm", "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral",
        "meta-llama-Llama-3.1-8B-Instruct.jinja": "none"}
    assert _format("openai-gpt-oss-120b.jinja").needs_special_tokens
    assert not _format("Qwen3.5-4B.jinja").needs_special_tokens


@pytest.mark.parametrize("template, text", [
    ("Qwen-Qwen3-0.6B.jinja", '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1</tool_call> ok'),
    ("Qwen-Qwen3-0.6B.jinja", '<tool_call>\n{"name": "special_function", "argu'),
    ("Qwen3-Coder.jinja", "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n"),
    ("GLM-4.6.jinja", "<tool_call>{not a name}</tool_call>"),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", '[TOOL_CALLS]special_function[ARGS]{"arg1": }'),
    ("deepseek-ai-DeepSeek-V3.1.jinja", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{bad}"
                                        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
])
def test_a_malformed_call_is_content(template, text):
    fmt = _format(template)
    parsed = parse_output(fmt, text, tools=FIX_TOOLS)
    assert parsed.tool_calls == [] and parsed.content == text
    for size in (1, 4):
        assert _streamed(fmt, text, size, tools=FIX_TOOLS) == (text, "", [])


def test_content_streams_before_the_call_is_complete():
    parser = OutputParser(_format("Qwen3.5-4B.jinja"), tools=FIX_TOOLS)
    assert parser.feed("Sure. <tool").content == "Sure. "
    assert not parser.feed("_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n")
    d = parser.feed("</function>\n</tool_call>")
    assert [(c.index, c.name, c.arguments) for c in d.tool_calls] == [(0, "special_function", '{"arg1": 1}')]
    assert len(d.tool_calls[0].id) == 9 and d.tool_calls[0].id.isalnum()
    assert not parser.finish()


def test_tool_choice_none_keeps_calls_as_text():
    text = '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'
    assert parse_output(_format("Qwen-Qwen2.5-7B-Instruct.jinja"), text, parse_tools=False).content == text


# --- structured output ---------------------------------------------------------------------------
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                         "when": {"type": "string", "format": "date"}}}


def test_unsupported_schema_features_are_named():
    from moecli.templates.grammar import SchemaError, json_schema_grammar, response_format_grammar

    with pytest.raises(SchemaError) as err:
        json_schema_grammar({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
                                                              "e": {"type": "string", "format": "email"}},
                             "not": {"required": ["x"]}})
    assert "not at /" in err.value.message and "minimum at /properties/n" in err.value.message
    assert "format 'email' at /properties/e" in err.value.message and isinstance(err.value, MoecliError)
    with pytest.raises(SchemaError, match="only local references"):
        response_format_grammar({"type": "json_schema", "json_schema": {"schema": {"$ref": "https://x/y.json"}}})
    assert response_format_grammar({"type": "text"}) is None and response_format_grammar(None) is None
    assert "root ::=" in response_format_grammar({"type": "json_object"})


def test_tool_choice_grammars_wrap_the_arguments_in_the_templates_format():
    from moecli.templates.grammar import tool_call_grammar

    tools = [SPECIAL, PYTHON]
    assert tool_call_grammar(_format("Qwen3.5-4B.jinja"), tools, "auto") is None
    named = tool_call_grammar(_format("Qwen3.5-4B.jinja"), tools, {"type": "function", "function": {"name": "python"}})
    assert '"<tool_call>\\n<function=python>\\n"' in named and "special_function" not in named
    for name in ("Qwen-Qwen3-0.6B.jinja", "GLM-4.6.jinja", "openai-gpt-oss-120b.jinja",
                 "deepseek-ai-DeepSeek-V3.1.jinja", "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
                 "mistralai-Mistral-Nemo-Instruct-2407.jinja"):
        assert tool_call_grammar(_format(name), tools, "required", parallel=True).count("root ::=") == 1
    with pytest.raises(MoecliError, match="'nope', which is not among the tools"):
        tool_call_grammar(_format("Qwen3.5-4B.jinja"), tools, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(MoecliError, match="no tool-call format"):
        tool_call_grammar(_format("meta-llama-Llama-3.1-8B-Instruct.jinja"), tools, "required")


@pytest.fixture(scope="module")
def engine(demo_model_session):
    from moecli.engine import Engine
    from moecli.params import LlamaParams

    with Engine.load(demo_model_session, LlamaParams(n_ctx=1024, n_threads=1)) as e:
        yield e


ASK = [{"role": "user", "content": "Who is it?"}]


def test_a_constrained_generation_validates_against_the_schema(engine):
    jsonschema = pytest.importorskip("jsonschema")
    from moecli.engine import Sampling
    from moecli.templates.grammar import json_schema_grammar

    grammar = json_schema_grammar(PERSON)
    for seed in range(4):
        text = "".join(engine.chat(ASK, Sampling(seed=seed, n_predict=200, grammar=grammar),
                                   template_kwargs={"enable_thinking": False}))
        assert engine.last_stop_reason == "eog", text
        jsonschema.validate(json.loads(text), PERSON)


def test_a_forced_tool_call_parses_and_validates(engine):
    jsonschema = pytest.importorskip("jsonschema")
    from moecli.engine import Sampling
    from moecli.templates.grammar import tool_call_grammar

    # the demo's random weights never close a string of their own: strings have a maximum length here
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "days": {"type": "integer"}},
        "required": ["city"]}}}
    tools = [weather, {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]
    fmt = engine.output_format
    assert fmt.tools in ("hermes", "qwen3-coder")  # the demo model's Qwen template
    grammar = tool_call_grammar(fmt, tools, "required")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for seed in range(3):
        text = "".join(engine.chat(ASK, Sampling(seed=seed, n_predict=200, grammar=grammar), tools=tools,
                                   template_kwargs={"enable_thinking": False}))
        parsed = parse_output(fmt, text, tools=tools)
        assert len(parsed.tool_calls) == 1, text
        call = parsed.tool_calls[0]
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_a_bad_grammar_is_one_error(engine):
    from moecli.engine import Sampling

    with pytest.raises(MoecliError, match="could not parse the grammar"):
        list(engine.chat(ASK, Sampling(n_predict=2, grammar="root ::= (")))


# --- `moecli run` ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_template_gguf(tmp_path_factory) -> Path:
    """The demo model as an old conversion ships it: no tokenizer.chat_template."""
    from dataclasses import replace

    from moecli.synth import demo_recipe

    recipe = demo_recipe()
    metadata = {k: v for k, v in recipe.metadata.items() if k != "tokenizer.chat_template"}
    path = tmp_path_factory.mktemp("no-template") / "base.gguf"
    replace(recipe, metadata=metadata).write(path, fill="random", seed=0)
    return path


def test_run_without_a_template_says_so_once_and_chats(no_template_gguf):
    from cliutil import invoke

    ran = invoke("run", str(no_template_gguf), "-t", "1", "-p", "Hi", "-n", "6", "--seed", "1")
    assert ran.code == 0, ran.output
    assert ran.stderr.count("has no chat template; using llama.cpp's built-in 'chatml'") == 1
    assert "--chat-template-file" in ran.stderr


def test_run_raw_continues_the_text(no_template_gguf):
    from cliutil import invoke

    ran = invoke("run", str(no_template_gguf), "-t", "1", "-no-cnv", "-p", "Once upon a time", "-n", "6", "--seed", "1")
    assert ran.code == 0, ran.output
    assert "chat template" not in ran.stderr and "generation 6 tok" in ran.stderr
    assert invoke("run", "demo", "--no-conversation").code == 2


def test_run_with_another_template_and_a_system_file(tmp_path):
    from cliutil import invoke

    bad = invoke("run", "demo", "--chat-template", "nope", "-p", "x")
    assert bad.code == 2 and "not one of llama.cpp's built-in templates" in bad.stderr
    (tmp_path / "t.jinja").write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                      "{% endfor %}<|im_start|>assistant\n")
    (tmp_path / "sys.txt").write_text("Be brief.\n")
    ran = invoke("run", "demo", "-t", "1", "--chat-template-file", str(tmp_path / "t.jinja"),
                 "--system-file", str(tmp_path / "sys.txt"), "-p", "Hi", "-n", "4")
    assert ran.code == 0, ran.output
    assert invoke("run", "demo", "--chat-template", "llama3", "-t", "1", "-p", "Hi", "-n", "2").code == 0
    both = invoke("run", "demo", "--system", "a", "--system-file", str(tmp_path / "sys.txt"), "-p", "x")
    assert both.code == 2 and "both given" in both.stderr


def test_run_json_schema_answers_with_valid_json(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from cliutil import invoke

    (tmp_path / "person.json").write_text(json.dumps(PERSON))
    for seed in ("1", "2"):
        ran = invoke("run", "demo", "-t", "1", "--json-schema", str(tmp_path / "person.json"), "-p", "Who?",
                     "-n", "200", "--seed", seed)
        assert ran.code == 0, ran.output
        jsonschema.validate(json.loads(ran.stdout), PERSON)
    (tmp_path / "bad.json").write_text(json.dumps({"type": "integer", "minimum": 1}))
    bad = invoke("run", "demo", "--json-schema", str(tmp_path / "bad.json"), "-p", "x")
    assert bad.code == 2 and "minimum at /" in bad.stderr


def test_run_shows_the_tool_calls_the_model_makes():
    import io

    from moecli.chat import ChatSession
    from moecli.engine import Sampling, Timings
    from moecli.output import Output

    class Scripted:
        output_format = _format("Qwen-Qwen3-0.6B.jinja")
        last_timings = last_stop_reason = None

        def render_chat(self, messages, **kwargs):
            return "<|im_start|>assistant\n"

        def chat(self, messages, sampling, *, should_stop, template_kwargs=None):
            yield from ["Let me look.", "<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
                        "\n</tool_call>"]
            self.last_timings = Timings(prompt_n=1, prompt_ms=1.0, predicted_n=5, predicted_ms=1.0, ttft_ms=1.0)

    out = Output(stdout=io.StringIO(), stderr=io.StringIO())
    session = ChatSession(Scripted(), Sampling(), out)
    session.reply("Weather in Paris?")
    assert out.stdout.getvalue() == 'Let me look.\n→ tool call get_weather({"city": "Paris"})\n\n'
    assert [c.name for c in session.tool_calls] == ["get_weather"]
