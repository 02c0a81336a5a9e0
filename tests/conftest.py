"""Every test runs with its own user directories: nothing touches the real home, store or HF cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# the fixtures of the CLI helpers and of the local Hub server, for every test module
pytest_plugins = ["cliutil", "hubserver"]


@pytest.fixture(scope="session")
def demo_model_session(tmp_path_factory) -> Path:
    """The demo model, built once per test session (about a second)."""
    from moecli.synth import ensure_demo_model

    return ensure_demo_model(tmp_path_factory.mktemp("demo-model"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch, demo_model_session):
    from moecli import paths

    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MOECLI_HOME", str(home / "moecli"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    # the session's demo model, where ensure_demo_model() looks for it
    models = paths.models_dir()
    models.mkdir(parents=True)
    try:
        os.link(demo_model_session, models / demo_model_session.name)
    except OSError:
        shutil.copy2(demo_model_session, models / demo_model_session.name)
    return home
