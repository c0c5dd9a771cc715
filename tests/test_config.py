"""Server settings from the wire: flat or nested, typed, range-checked, unchanged on error."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from lsp_server.config import (SETTINGS, CompletionSettings, ConfigError, ModelConfig, ServerConfig, apply_settings,
                               config_from_args, settings_table)

VSCODE = Path(__file__).resolve().parent.parent / "editor-clients" / "vscode"


def test_flat_settings_apply_to_their_components():
    config = apply_settings(ServerConfig(), {
        "model": "/models/santacoder", "revision": "main", "backend": "torch", "device": "cpu", "dtype": "bfloat16",
        "cacheBytes": 1 << 30, "maxNewTokens": 32, "temperature": 0.2, "multiline": "never",
        "prefixSuffixRatio": 2, "neighbours": False, "fimMode": "psm", "timeBudgetMs": 500, "debounceMs": 30,
        "tokenHealing": False, "minTokenProbability": 0.2, "alternatives": 2, "exclude": ["**/.env", "*.pem"],
        "beam": 2,
    })
    assert config == ServerConfig(
        model=ModelConfig(model="/models/santacoder", revision="main", backend="torch", device="cpu",
                          dtype="bfloat16", cache_bytes=1 << 30),
        completion=CompletionSettings(max_new_tokens=32, temperature=0.2, multiline="never", prefix_suffix_ratio=2,
                                      neighbours=False, fim_mode="psm", time_budget_s=0.5, token_healing=False,
                                      min_token_probability=0.2, beam=2),
        debounce_ms=30, alternatives=2, exclude=("**/.env", "*.pem"),
    )


@pytest.mark.parametrize("section", ["fim-lsp", "fimLsp"])
def test_settings_nested_under_the_section_name(section):
    config = apply_settings(ServerConfig(), {section: {"maxNewTokens": 8}, "otherServer": {"x": 1}})
    assert config.completion.max_new_tokens == 8


def test_none_and_empty_leave_the_configuration_unchanged():
    base = ServerConfig(debounce_ms=5)
    assert apply_settings(base, None) is base
    assert apply_settings(base, {}) == base


@pytest.mark.parametrize("raw, message", [
    ({"maxNewTokens": "64"}, "'maxNewTokens' must be int"),
    ({"maxNewTokens": True}, "'maxNewTokens' must be int"),
    ({"maxNewTokens": 0}, "maxNewTokens must be between 1 and 4096"),
    ({"multiline": "sometimes"}, "'multiline' must be one of ['auto', 'never', 'always']"),
    ({"neighbors": True}, "unknown setting 'neighbors'"),
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"debounceMs": -5}, "debounceMs must be >= 0"),
    ({"alternatives": 0}, "alternatives must be between 1 and 8"),
    ({"beam": 0}, "beam must be between 1 and 8"),
    ({"beam": 9}, "beam must be between 1 and 8"),
    ({"beam": 2.5}, "'beam' must be int or null"),
    ({"exclude": "**/.env"}, "'exclude' must be list"),
    ({"exclude": ["*.pem", 3]}, "'exclude' must be a list of glob patterns"),
    ({"exclude": [" "]}, "'exclude' must be a list of glob patterns"),
    ({"minTokenProbability": 1}, "minTokenProbability must be >= 0 and < 1"),
    ({"minTokenProbability": -0.1}, "minTokenProbability must be >= 0 and < 1"),
    ([1, 2], "settings must be a JSON object, got list"),
])
def test_bad_settings_raise_a_clear_error(raw, message):
    with pytest.raises(ConfigError) as info:
        apply_settings(ServerConfig(), raw)
    assert message in str(info.value)


def test_command_line_flags():
    args = argparse.Namespace(model="m", revision=None, backend="auto", device="cpu", dtype="float32", threads=2,
                              max_new_tokens=16, temperature=0.0, fim_mode="spm", beam=1)
    config = config_from_args(args)
    assert config.model == ModelConfig(model="m", device="cpu", dtype="float32", threads=2)
    assert config.completion == CompletionSettings(max_new_tokens=16, fim_mode="spm", beam=1)


def test_a_url_with_backend_auto_runs_remotely_from_the_wire_and_the_command_line():
    wire = apply_settings(ServerConfig(), {"url": "http://127.0.0.1:8000"})
    assert wire.model.backend == "auto" and wire.model.runtime == "openai"
    assert apply_settings(wire, {"backend": "torch"}).model.runtime == "torch"
    assert ModelConfig().runtime == "auto"
    args = argparse.Namespace(backend="auto", url="http://127.0.0.1:8000")
    assert config_from_args(args).model.runtime == "openai"


def test_int8_weights_can_be_asked_for_from_an_editor():
    assert apply_settings(ServerConfig(), {"dtype": "int8"}).model.dtype == "int8"


def test_the_vscode_extension_offers_every_server_setting_with_the_servers_values_and_defaults():
    """What the extension sends (SERVER_KEYS) and declares (package.json) is what the server takes:
    each setting's enum is the server's allowed values and its default leaves the server's default."""
    props = json.loads((VSCODE / "package.json").read_text())["contributes"]["configuration"]["properties"]
    source = (VSCODE / "src" / "extension.ts").read_text()
    sent = re.findall(r"'(\w+)'", re.search(r"const SERVER_KEYS = \[(.*?)\]", source, re.S).group(1))
    assert sorted(sent) == sorted(set(SETTINGS) - {"apiKey"}), "apiKey comes from the environment, never settings.json"
    for key in sent:
        prop = props[f"fim-lsp.{key}"]
        allowed = SETTINGS[key].allowed
        assert prop["description"] == SETTINGS[key].doc, f"package.json's {key} says what SETTINGS says"
        if allowed is not None:
            assert prop["enum"] == list(allowed), key
        assert apply_settings(ServerConfig(), {key: prop["default"]}) == ServerConfig(), (key, prop["default"])


def test_the_old_name_of_a_renamed_setting_still_applies_and_says_so():
    notes: list[str] = []
    config = apply_settings(ServerConfig(), {"branches": 2}, notes)
    assert config.completion.beam == 2
    assert notes == ["setting 'branches' is now called 'beam'; the old name still works for now"]


def test_the_settings_page_is_the_generated_table_and_every_client_points_to_it():
    root = VSCODE.parent.parent
    page = (root / "docs" / "settings.md").read_text()
    table = page.split("<!-- generated: settings_table() -->\n")[1].split("<!-- end generated -->")[0]
    assert table == settings_table(), "regenerate docs/settings.md from lsp_server.config.settings_table()"
    assert all(f"| `{key}` |" in table for key in SETTINGS)
    for readme in ("README.md", "editor-clients/neovim/README.md", "editor-clients/jupyterlab/README.md",
                   "editor-clients/vscode/README.md"):
        text = (root / readme).read_text()
        assert "docs/settings.md" in text, f"{readme} sends readers to the one settings list"
        assert "`branches`" not in text.replace("`branches` is now `beam`", ""), f"{readme} uses the setting's name"
    readme = (root / "README.md").read_text()
    assert [key for key in SETTINGS if f"`{key}`" not in readme] == [], "the README names every setting"


def test_the_environment_api_key_goes_only_to_the_operators_url(monkeypatch):
    """A client may set `url`, but $FIM_LSP_API_KEY is sent only to the url of the command line,
    unless the operator opted in with --allow-client-url."""
    from engine import backends
    from lsp_server import pipeline

    args = argparse.Namespace(url="http://127.0.0.1:8000", allow_client_url=False)
    config = config_from_args(args)
    assert config.model.sends_env_key
    moved = apply_settings(config, {"url": "http://collector.example:9"})
    assert not moved.model.sends_env_key
    back = apply_settings(moved, {"url": "http://127.0.0.1:8000"})
    assert back.model.sends_env_key
    opted = config_from_args(argparse.Namespace(url="http://127.0.0.1:8000", allow_client_url=True))
    assert apply_settings(opted, {"url": "http://collector.example:9"}).model.sends_env_key

    seen = {}
    monkeypatch.setattr(backends, "load", lambda name, **kw: seen.update(kw))
    pipeline.load_model(moved.model)
    assert seen["url"] == "http://collector.example:9" and seen["remote"].api_key_env == ""
    pipeline.load_model(config.model)
    assert seen["remote"].api_key_env == "FIM_LSP_API_KEY"
