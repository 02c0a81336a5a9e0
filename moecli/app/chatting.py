"""What a chat is given before the model loads: the system prompt, the template, structured
output. Checked before loading, so a typo costs no load."""

from __future__ import annotations

import json
from pathlib import Path

from moecli.errors import BadInput


def chat_inputs(*, prompt: str | None, system: str | None, system_file: Path | None, chat_template: str | None,
                chat_template_file: Path | None, no_conversation: bool, json_schema: Path | None,
                reasoning: str) -> tuple[str | None, str | None]:
    """`run`'s template and structured-output options checked before the model loads: the system
    prompt (--system or --system-file) and the grammar of --json-schema."""
    from moecli.templates import BUILTIN_NAMES, read_template_file

    if system is not None and system_file is not None:
        raise BadInput("--system and --system-file both given", "give one")
    if system_file is not None:
        try:
            system = system_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadInput(f"cannot read {system_file}: {exc.strerror or exc}", "give a readable text file") from None
    if chat_template is not None and chat_template_file is not None:
        raise BadInput("--chat-template and --chat-template-file both given", "give one")
    if chat_template is not None and chat_template not in BUILTIN_NAMES:
        raise BadInput(f"--chat-template {chat_template!r} is not one of llama.cpp's built-in templates",
                       "one of: " + ", ".join(sorted(BUILTIN_NAMES)) + "; or --chat-template-file PATH")
    if chat_template_file is not None:
        read_template_file(chat_template_file)
    if no_conversation and prompt is None:
        raise BadInput("--no-conversation continues a text: give it with -p", 'e.g. -no-cnv -p "Once upon a time"')
    if no_conversation and (system is not None or chat_template or chat_template_file):
        raise BadInput("--no-conversation uses no template: no system prompt, no chat template", "leave those out")
    if json_schema is None:
        return system, None
    if prompt is None:
        raise BadInput("--json-schema answers one prompt", 'give it with -p "..."')
    if reasoning.lower() == "on":
        raise BadInput("--json-schema answers without thinking", "leave out --reasoning on")
    try:
        schema = json.loads(json_schema.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read {json_schema}: {exc.strerror or exc}", "give a JSON schema file") from None
    except ValueError as exc:
        raise BadInput(f"{json_schema} is not JSON: {exc}", "give a JSON schema file") from None
    from moecli.templates.grammar import json_schema_grammar

    return system, json_schema_grammar(schema)
