"""SantaCoder's revisions: a hub-cache snapshot says which branch it is; `no-fim` completes left to right."""
import shutil

import pytest
import torch

from engine.loading import load_model
from engine.revisions import hub_snapshot_of, trained_without_fim
from fim_lsp.status import describe
from lsp_server.core.prompt import NO_FIM_NOTE, PromptConfig, choose_mode
from tests.conftest import kit

CPU = torch.device("cpu")


def hub_cache(tmp_path, revisions: dict[str, str]):
    """A hub cache holding bigcode/santacoder: one snapshot (the tiny kit) per commit, refs as named."""
    repo = tmp_path / "hub" / "models--bigcode--santacoder"
    for ref, commit in revisions.items():
        snapshot = repo / "snapshots" / commit
        if not snapshot.exists():
            shutil.copytree(kit(shape="tiny", family="santacoder"), snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def test_a_snapshot_names_its_revisions(tmp_path):
    repo = hub_cache(tmp_path, {"main": "aaa", "no-fim": "bbb", "fim": "aaa"})
    assert hub_snapshot_of(repo / "snapshots" / "aaa") == ("bigcode/santacoder", frozenset({"main", "fim"}))
    assert trained_without_fim(repo / "snapshots" / "aaa") is None
    assert trained_without_fim(repo / "snapshots" / "bbb") == (
        "bigcode/santacoder@no-fim was trained without FIM: left-to-right completion")
    assert hub_snapshot_of(kit(shape="tiny", family="santacoder")) is None  # a plain directory


def test_no_fim_loads_left_to_right_and_fim_with_fim(tmp_path):
    repo = hub_cache(tmp_path, {"no-fim": "bbb", "fim": "ccc"})
    no_fim = load_model(str(repo / "snapshots" / "bbb"), CPU, torch.float32)
    assert not no_fim.tokenizer.fim.has_fim and no_fim.tokenizer.fim.family == "santacoder"
    assert choose_mode(no_fim.tokenizer.fim, PromptConfig()) == ("l2r", NO_FIM_NOTE)
    fim = load_model(str(repo / "snapshots" / "ccc"), CPU, torch.float32)
    assert choose_mode(fim.tokenizer.fim, PromptConfig()) == ("spm", "")
    assert describe(str(repo / "snapshots" / "bbb"), dtype="float32")["fim"].startswith("bigcode/santacoder@no-fim")


@pytest.mark.parametrize("revision, has_fim", [("no-fim", False), ("mha", True), ("b" * 40, False)])
def test_revision_resolves_from_the_hub_cache_offline(tmp_path, monkeypatch, revision, has_fim):
    import huggingface_hub.constants

    repo = hub_cache(tmp_path, {"main": "a" * 40, "no-fim": "b" * 40, "mha": "c" * 40})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(repo.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("bigcode/santacoder", CPU, torch.float32, revision=revision)
    assert loaded.path.parent.parent == repo
    assert loaded.tokenizer.fim.has_fim is has_fim
