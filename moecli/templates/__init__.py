"""Chat templates, tool calls and structured output: what `run` and `serve` put around a
conversation and read back out of a reply. Below the engine (it needs only `errors`); llama.cpp
is imported only where a built-in template is rendered or a grammar is checked.

    render     ChatTemplate: Jinja in jinja2's sandbox, messages in the shape templates expect;
               TemplateError (one line naming the template)
    builtin    llama.cpp's built-in templates: names, the one for a GGUF without a template;
               choose_template (file, built-in name, the GGUF's own, the architecture's)
    llamachat  the built-ins through llama.cpp's C API (llama_chat_apply_template)
    toolcalls  the model's output read back (content, reasoning, tool calls), incrementally,
               for the formats of the MoE families (Hermes/Qwen3, Qwen3-Coder/3.5/3.6 XML,
               gpt-oss harmony, DeepSeek V3.1, GLM-4.5/4.6, Mistral)
    grammar    JSON schema / json_object -> GBNF (llama-cpp-python's port of llama.cpp's
               converter); the grammar of a forced tool call in the template's own format
"""

from moecli.templates.builtin import BUILTIN_NAMES, builtin_for, choose_template, read_template_file
from moecli.templates.errors import TemplateError
from moecli.templates.render import ChatTemplate
from moecli.templates.toolcalls import (
    Delta,
    OutputFormat,
    OutputParser,
    Parsed,
    ToolCall,
    ToolCallDelta,
    detect_format,
    opens_reasoning,
    parse_output,
)

__all__ = [
    "BUILTIN_NAMES", "ChatTemplate", "Delta", "OutputFormat", "OutputParser", "Parsed", "TemplateError", "ToolCall",
    "ToolCallDelta", "builtin_for", "choose_template", "detect_format", "opens_reasoning", "parse_output",
    "read_template_file",
]
