"""StarCoder's `<reponame>` header: the workspace folder's name, placed where it keeps the prompt
cache-stable, absent for families without the token and when the setting is off."""
from __future__ import annotations

import pytest

from engine.fim import FimTokens, fim_tokens_from_vocab
from fim_lsp.training.checkpoint_kit import SANTACODER_SPECIALS, STARCODER_SPECIALS
from lsp_server.config import ConfigError, ServerConfig, apply_settings
from lsp_server.core.context import cursor_context
from lsp_server.documents import repo_name
from lsp_server.pipeline import pipeline_config
from lsp_server.core.prompt import PromptConfig, build_prompt

STARCODER = fim_tokens_from_vocab(STARCODER_SPECIALS)
SANTACODER = fim_tokens_from_vocab(SANTACODER_SPECIALS)


def count_chars(text: str) -> int:
    return len(text)


def test_the_tokenizers_say_whether_they_have_reponame():
    assert STARCODER.reponame == "<reponame>" and "<reponame>" in STARCODER.stop_tokens()
    assert SANTACODER.reponame is None


@pytest.mark.parametrize("fim, config, path, expected_head", [
    (STARCODER, PromptConfig(), "src/app.py", "<reponame>shop<filename>src/app.py\n"),
    (STARCODER, PromptConfig(include_filename=False), "src/app.py", "<reponame>shop\n"),
    (STARCODER, PromptConfig(include_repo_name=False), "src/app.py", "<filename>src/app.py\n"),
    (SANTACODER, PromptConfig(), "src/app.py", ""),
], ids=["starcoder", "no-filename", "setting-off", "santacoder"])
def test_reponame_heads_the_file(fim, config, path, expected_head):
    ctx = cursor_context("def f():\n    return 1\n", 1, 4)
    prompt = build_prompt(ctx, fim, count_chars, 1024, config, path=path, repo="shop")
    fim_part = f"{fim.prefix}{fim.suffix}return 1\n{fim.middle}def f():\n    "
    assert prompt.text == expected_head + fim_part


def test_keystrokes_only_append_with_the_repo_name():
    """The header is the same on every keystroke, so each prompt extends the previous one."""
    typed = "total = compute(values)"
    previous = None
    for k in range(len(typed) + 1):
        text = "import os\n" + typed[:k] + "\n\nprint(total)\n"
        ctx = cursor_context(text, 1, k)
        prompt = build_prompt(ctx, STARCODER, count_chars, 2048, PromptConfig(), path="a.py", repo="shop").text
        assert prompt.startswith("<reponame>shop<filename>a.py\n")
        if previous is not None:
            assert prompt.startswith(previous)
        previous = prompt


@pytest.mark.parametrize("uri, roots, expected", [
    ("file:///home/u/shop/src/app.py", ["file:///home/u/shop"], "shop"),
    ("file:///home/u/shop/libs/pay/x.py", ["file:///home/u/shop", "file:///home/u/shop/libs/pay"], "pay"),
    ("file:///tmp/loose.py", ["file:///home/u/shop"], None),
    ("untitled:Untitled-1", ["file:///home/u/shop"], None),
    ("file:///home/u/my%20repo/a.py", ["file:///home/u/my%20repo"], "my repo"),
])
def test_repo_name_is_the_innermost_workspace_folder(uri, roots, expected):
    assert repo_name(uri, roots) == expected


def test_the_setting_turns_it_off():
    config = apply_settings(ServerConfig(), {"repoName": False})
    assert pipeline_config(config.completion).prompt.include_repo_name is False
    assert pipeline_config(ServerConfig().completion).prompt.include_repo_name is True
    with pytest.raises(ConfigError, match="'repoName' must be bool"):
        apply_settings(ServerConfig(), {"repoName": "no"})
    assert FimTokens(family="none", eod="<|endoftext|>").reponame is None


def test_fim_lsp_complete_names_the_repository_as_the_server_would(tmp_path):
    from fim_lsp.complete import prompt_path, workspace_roots

    repo = tmp_path / "shop"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()
    file = repo / "src" / "app.py"
    file.write_text("x = 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    roots = workspace_roots(file, cwd=elsewhere)
    assert repo_name(file.as_uri(), roots) == "shop" and prompt_path(file, cwd=elsewhere) == "src/app.py"


def test_the_bundled_model_is_prompted_with_the_headers_it_was_trained_with(tmp_path):
    """Its tokenizer has StarCoder's <reponame> and Jupyter tokens, but its trainer wrote only
    <filename> heads: a checkpoint that says so gets only those; one that says nothing gets all."""
    import json
    import shutil

    from engine.loading import load_tokenizer
    from engine.select import DEFAULT_MODEL_DIR

    bundled = load_tokenizer(DEFAULT_MODEL_DIR).fim
    assert bundled.filename == "<filename>" and bundled.reponame is None and not bundled.jupyter
    copy = tmp_path / "unsaid"
    shutil.copytree(DEFAULT_MODEL_DIR, copy, ignore=shutil.ignore_patterns("*.safetensors", "fim-lsp-prompt.json"))
    unsaid = load_tokenizer(copy).fim
    assert unsaid.reponame == "<reponame>" and unsaid.jupyter
    (copy / "fim-lsp-prompt.json").write_text(json.dumps({"headers": ["filename", "jupyter"]}))
    assert load_tokenizer(copy).fim.jupyter and load_tokenizer(copy).fim.reponame is None
