"""moecli: run big Mixture-of-Experts language models on small GPUs through llama.cpp.

    import moecli
    plan = moecli.plan("demo", vram="6GiB")          # where every tensor goes; nothing loaded
    with moecli.load("demo") as engine:              # llama.cpp with that plan
        print("".join(engine.chat([{"role": "user", "content": "Hello"}])))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from moecli.engine import Engine
    from moecli.planner import Plan


def plan(model: str, **options) -> Plan:
    """See `moecli.app.api.plan` (imported on first use: `import moecli` stays light)."""
    from moecli.app import api

    return api.plan(model, **options)


def load(model: str, **options) -> Engine:
    """See `moecli.app.api.load`."""
    from moecli.app import api

    return api.load(model, **options)
