"""llama.cpp's built-in chat templates (src/llama-chat.cpp): their names, which one fits a GGUF
that carries no `tokenizer.chat_template` (by architecture and name), and the choice of a model's
template (`choose_template`). Rendering one goes through the C API (`llamachat`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from moecli.templates.render import ChatTemplate, TemplateError

# llama_chat_builtin_templates() of the pinned llama.cpp (a test compares them), so
# that a name is checked before llama.cpp is loaded.
BUILTIN_NAMES = (
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1", "mistral-v3",
    "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr", "monarch",
    "gemma", "orion", "openchat", "vicuna", "vicuna-orca", "deepseek", "deepseek2", "deepseek3", "deepseek-ocr",
    "command-r", "llama3", "chatglm3", "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "exaone-moe",
    "rwkv-world", "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex", "bailing",
    "bailing-think", "bailing2", "llama4", "smolvlm", "hunyuan-moe", "gpt-oss", "hunyuan-dense", "hunyuan-vl",
    "kimi-k2", "seed_oss", "grok-2", "pangu-embedded", "solar-open",
)

# general.architecture -> the built-in its models were trained on (llama.cpp's own names; the
# formats are in llama-chat.cpp). Qwen's, OLMoE's... are ChatML.
_BY_ARCH = {
    "qwen": "chatml", "qwen2": "chatml", "qwen2moe": "chatml", "qwen2vl": "chatml", "qwen3": "chatml",
    "qwen3moe": "chatml", "qwen3next": "chatml", "qwen3vl": "chatml", "qwen3vlmoe": "chatml", "qwen35": "chatml",
    "qwen35moe": "chatml", "internlm2": "chatml", "smollm3": "chatml", "dots1": "chatml",
    "llama4": "llama4", "phi3": "phi3", "phimoe": "phi3", "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma",
    "gemma3n": "gemma", "orion": "orion", "deepseek": "deepseek", "deepseek2": "deepseek3",
    "command-r": "command-r", "cohere2": "command-r", "chatglm": "chatglm4", "glm4": "chatglm4",
    "glm4moe": "chatglm4", "minicpm": "minicpm", "minicpm3": "minicpm", "exaone": "exaone3",
    "exaone4": "exaone4", "exaone-moe": "exaone-moe", "rwkv6": "rwkv-world", "rwkv7": "rwkv-world",
    "granite": "granite", "granitemoe": "granite", "granitehybrid": "granite-4.0", "bailingmoe": "bailing",
    "bailingmoe2": "bailing2", "hunyuan-moe": "hunyuan-moe", "hunyuan-dense": "hunyuan-dense",
    "gpt-oss": "gpt-oss", "seed_oss": "seed_oss", "grok": "grok-2", "pangu-embedded": "pangu-embedded",
    "mistral3": "mistral-v7-tekken",
}

# words of general.name / general.basename that name a family more exactly than its architecture
_BY_NAME = (
    ("kimi-k2", "kimi-k2"), ("kimi k2", "kimi-k2"), ("falcon3", "falcon3"), ("falcon-3", "falcon3"),
    ("phi-4", "phi4"), ("phi4", "phi4"), ("deepseek-v2", "deepseek2"), ("deepseek-coder-v2", "deepseek2"),
    ("megrez", "megrez"), ("gigachat", "gigachat"), ("yandex", "yandex"), ("solar-open", "solar-open"),
    ("chatglm3", "chatglm3"), ("openchat", "openchat"), ("vicuna", "vicuna"), ("zephyr", "zephyr"),
)

def builtin_for(metadata: Mapping[str, str]) -> str | None:
    """The built-in template for a GGUF without one, from its name, else its architecture (a
    `llama` model is Llama 3 when its tokenizer is Llama 3's, else Llama 2; `mistral`-named llama
    models are Mistral v1/v3/tekken by tokenizer)."""
    arch = metadata.get("general.architecture", "")
    name = " ".join(metadata.get(k, "") for k in ("general.name", "general.basename")).lower()
    pre = metadata.get("tokenizer.ggml.pre", "")
    for word, builtin in _BY_NAME:
        if word in name:
            return builtin
    if arch == "llama":
        if "mistral" in name or "mixtral" in name:
            return "mistral-v3-tekken" if pre == "tekken" else "mistral-v3" if "v0.3" in name else "mistral-v1"
        if pre in ("llama-bpe", "llama3"):
            return "llama3"
        if metadata.get("tokenizer.ggml.model") == "llama":
            return "llama2-sys"
        return None
    return _BY_ARCH.get(arch)


def read_template_file(path: str | os.PathLike[str]) -> str:
    """A Jinja template from a file (a `.json` with a `chat_template` key, as in a model's
    tokenizer_config.json, works too)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read the chat template {p}: {exc.strerror or exc}",
                            "give a readable Jinja file to --chat-template-file") from None
    if p.suffix == ".json":
        try:
            value = json.loads(text).get("chat_template")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
            value = next((v.get("template") for v in value if v.get("name") == "default"), None)
        if not isinstance(value, str):
            raise TemplateError(f"{p} has no chat_template string", "give a Jinja file to --chat-template-file")
        text = value
    return text


def choose_template(gguf_template: str | None, metadata: Mapping[str, str], *, bos_token: str = "",
                    eos_token: str = "", name: str | None = None, path: str | os.PathLike[str] | None = None,
                    knows_token: Callable[[str], bool] | None = None) -> ChatTemplate:
    """The template to chat with: the file given (--chat-template-file), else the built-in named
    (--chat-template), else the GGUF's own, else llama.cpp's built-in for the model's architecture
    or name (with a notice saying so), else ChatML where the vocabulary has its markers; else a
    TemplateError saying what to give."""
    model = metadata.get("general.name") or metadata.get("general.architecture") or "the model"
    hint = "--chat-template NAME (llama.cpp's built-ins) or --chat-template-file PATH (Jinja)"
    if path is not None:
        template = ChatTemplate(name=Path(path).name, source=read_template_file(path),
                                bos_token=bos_token, eos_token=eos_token)
        template.check()
        return template
    if name is not None:
        if name not in BUILTIN_NAMES:
            raise TemplateError(f"--chat-template {name!r} is not one of llama.cpp's built-in templates",
                                "one of: " + ", ".join(BUILTIN_NAMES) + "; or --chat-template-file PATH")
        return ChatTemplate(name=f"built-in {name}", builtin=name, bos_token=bos_token, eos_token=eos_token)
    if gguf_template:
        if gguf_template in BUILTIN_NAMES:  # llama_model_chat_template's own fallback (Mistral Small 2503)
            return ChatTemplate(name=f"built-in {gguf_template}", builtin=gguf_template)
        return ChatTemplate(name=f"{model}'s chat template", source=gguf_template,
                            bos_token=bos_token, eos_token=eos_token)
    arch = metadata.get("general.architecture", "?")
    chosen = builtin_for(metadata)
    why = f"architecture {arch}" if chosen and _BY_ARCH.get(arch) == chosen else "name"
    if chosen is None and knows_token is not None and knows_token("<|im_start|>") and knows_token("<|im_end|>"):
        chosen, why = "chatml", "vocabulary's <|im_start|> markers"
    if chosen is None:
        raise TemplateError(f"{model} has no chat template, and llama.cpp has none built in for architecture {arch}",
                            f"give one: {hint}; or --no-conversation -p TEXT to continue raw text")
    return ChatTemplate(name=f"built-in {chosen}", builtin=chosen, bos_token=bos_token, eos_token=eos_token,
                        notice=f"{model} has no chat template; using llama.cpp's built-in {chosen!r} (from its {why}). "
                               f"Another: {hint}")
