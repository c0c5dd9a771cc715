"""Shared fixtures: checkpoint-kit models (cached per machine, never downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.api import CancelToken
from fim_lsp.training.checkpoint_kit import CheckpointSpec, ensure_checkpoint

REPO = Path(__file__).resolve().parent.parent


def kit(**fields) -> Path:
    """The cached kit checkpoint for these CheckpointSpec fields."""
    return ensure_checkpoint(CheckpointSpec(**fields))


@pytest.fixture(scope="session")
def tiny_starcoder() -> Path:
    return kit(shape="tiny", family="starcoder")


@pytest.fixture(scope="session")
def tiny_santacoder() -> Path:
    return kit(shape="tiny", family="santacoder")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """An ONNX export (fp32 and int8) of the tiny StarCoder-family kit model, made once per run."""
    from engine.onnx_export import export

    out = tmp_path_factory.mktemp("onnx") / "tiny-starcoder"
    export(kit(shape="tiny", family="starcoder"), out, int8=True)
    return out


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to other tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CancelAfter(CancelToken):
    """Fires on its (n+1)-th check."""

    __slots__ = ("checks", "n")

    def __init__(self, n):
        super().__init__()
        self.checks, self.n = 0, n

    @property
    def cancelled(self):
        self.checks += 1
        return self.checks > self.n
