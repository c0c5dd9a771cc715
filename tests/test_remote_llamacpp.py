"""The language server against a real third-party OpenAI-compatible server: llama-cpp-python's.

A GGUF conversion of the tiny kit model (scripts/convert_to_gguf.py) is served by
`python -m llama_cpp.server` on 127.0.0.1. The language server must return that server's
completion (the oracle: the same pipeline in this process, talking to the same server); when the
server dies mid-request the editor gets one clear window/showMessage and an empty result; when it
is back, completions are served again.

Needs llama-cpp-python (built from source, ~7 min on two cores) and the converter from its source
distribution; CI installs both first (docs/remote.md, "Testing against llama.cpp"):

    python scripts/convert_to_gguf.py fetch
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "$(python scripts/convert_to_gguf.py sdist)[server]"
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from lsprotocol import types

from engine.backends.openai_backend import RemoteConfig, load_backend
from lsp_server import pipeline
from lsp_server.config import CompletionSettings
from tests.conftest import REPO
from tests.test_openai_backend import inline, lsp_session
from tests.test_server_e2e import TINY

pytestmark = pytest.mark.llamacpp
CONVERT = REPO / "scripts" / "convert_to_gguf.py"
GGUF_CACHE = Path.home() / ".cache" / "fim-lsp" / "gguf"
START_TIMEOUT_S = 120
TEXT = "def area(r):\n    return \n\nprint(area(2))\n"
URI = "file:///w/geometry.py"


@pytest.fixture(scope="module")
def gguf() -> Path:
    """The tiny kit model as GGUF (converted once, then cached)."""
    assert importlib.util.find_spec("llama_cpp") is not None, (
        "llama-cpp-python is not installed; install it as the module docstring says (docs/remote.md)")
    out = GGUF_CACHE / f"{Path(TINY).name}-f32.gguf"
    if not out.is_file():
        done = subprocess.run([sys.executable, str(CONVERT), "convert", TINY, str(out)], capture_output=True, text=True)
        assert done.returncode == 0, f"conversion failed (run `python {CONVERT} fetch` first?):\n{done.stderr[-3000:]}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_unread_bytes(port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until a loopback TCP socket on `port` holds received bytes its (stopped) owner has not read.

    Reads the kernel's socket table (/proc/net/tcp: `rx_queue` of each socket whose local port
    is `port`), so the test knows the request reached the frozen server instead of guessing a delay.
    """
    deadline = time.monotonic() + timeout_s  # only a hang takes this long
    while True:
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = row.split()
            local, queues = fields[1], fields[4]  # "0100007F:1F90", "tx_queue:rx_queue" in hex
            if int(local.split(":")[1], 16) == port and int(queues.split(":")[1], 16) > 0:
                return
        assert time.monotonic() < deadline, f"no request reached the server on port {port}"
        time.sleep(0.01)


class LlamaServer:
    """`python -m llama_cpp.server` on one loopback port, started and killed at will."""

    def __init__(self, model: Path, port: int) -> None:
        self.model, self.port = model, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "512", "--n_threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"llama_cpp.server exited with {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"llama_cpp.server did not answer on {self.url} within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def llama(gguf: Path):
    server = LlamaServer(gguf, free_port())
    server.start()
    yield server
    server.kill()


def expected_suggestion(url: str, line: int, character: int) -> str:
    """What the pipeline in this process gets from the same server for the same cursor."""
    backend = load_backend(model=TINY, url=url, environ={})
    settings = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False))
    # the server names a file outside any workspace folder by its name
    outcome = pipeline.complete(backend, URI, TEXT, line, character, config=settings, path="geometry.py")
    assert outcome.result.text, "the server generated text for this prompt"
    return outcome.suggestion.text if outcome.suggestion is not None else None


def raw_completion(url: str, prompt: str) -> str:
    body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["choices"][0]["text"]


async def test_the_language_server_serves_llama_cpp_and_survives_its_death(llama: LlamaServer):
    expected = expected_suggestion(llama.url, 1, 11)
    async with lsp_session(llama.url) as client:
        status = await client.protocol.send_request_async("fim-lsp/status", {})
        assert "OpenAI-compatible server" in status.why and f"at {llama.url}" in status.model
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=URI, language_id="python", version=1, text=TEXT)))
        assert await inline(client, URI, 1, 11) == ([expected] if expected else [])

        # the server freezes with our request in its socket, then dies: a clear message, an empty answer
        os.kill(llama.proc.pid, signal.SIGSTOP)
        asking = asyncio.ensure_future(inline(client, URI, 1, 10))
        await asyncio.to_thread(wait_for_unread_bytes, llama.port)  # our request sits in its socket
        llama.kill()
        assert await asking == []
        errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert errors == [f"fim-lsp: cannot reach the completion server at {llama.url}: Connection refused; "
                          f"is it running? (tried 3 times)"]

        llama.start()  # back on the same port: the next keystroke is served again
        # (at the position that failed: the one before would be answered from the suggestion shown there)
        expected = expected_suggestion(llama.url, 1, 10)
        assert await inline(client, URI, 1, 10) == ([expected] if expected else [])
        status = await client.protocol.send_request_async("fim-lsp/status", {})
        assert status.backend_error is None and status.last.reused is False, "the server itself answered"
        assert len([m for m in client.messages if m.type == types.MessageType.Error]) == 1


def test_streamed_answers_equal_whole_ones(llama: LlamaServer):
    """Our server-sent-event reader against llama.cpp's stream: the same text as one JSON answer."""
    if llama.proc is None or llama.proc.poll() is not None:
        llama.start()
    settings = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False))
    results = []
    for stream in (False, True):
        backend = load_backend(model=TINY, url=llama.url, remote=RemoteConfig(stream=stream), environ={})
        results.append(pipeline.complete(backend, URI, TEXT, 1, 11, config=settings).result)
    whole, streamed = results
    assert whole.text and streamed.text == whole.text
    assert raw_completion(llama.url, pipeline.complete(
        load_backend(model=TINY, url=llama.url, environ={}), URI, TEXT, 1, 11, config=settings).prompt.text
    ).startswith(whole.text), "the backend's text is the server's own, cut at a stop string at most"


@pytest.mark.parametrize("stream", [False, True])
def test_llama_cpp_reports_the_models_token_probabilities_when_asked(llama: LlamaServer, stream: bool):
    """With minTokenProbability set the request asks for `logprobs`; llama.cpp's figures for the same
    greedy tokens equal the in-process engine's (the same fp32 weights)."""
    if llama.proc is None or llama.proc.poll() is not None:
        llama.start()
    from lsp_server.config import ModelConfig

    config = replace(pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False,
                                                                 min_token_probability=0.01)), heal=False,
                     beam=1)  # greedy on both sides (the server is asked once; in process a beam would run)
    remote = load_backend(model=TINY, url=llama.url, remote=RemoteConfig(stream=stream), environ={})
    local = pipeline.load_model(ModelConfig(model=TINY, dtype="float32"))
    theirs = pipeline.complete(remote, URI, TEXT, 1, 11, config=config).result
    ours = pipeline.complete(local, URI, TEXT, 1, 11, config=config).result
    # (the texts differ only where a token holds part of a character: llama.cpp leaves it out)
    assert theirs.token_logprobs is not None and len(theirs.token_logprobs) == len(ours.token_logprobs) > 3
    assert theirs.token_logprobs == pytest.approx(ours.token_logprobs, abs=1e-2)  # llama.cpp sums in its own order
    assert theirs.token_ends[-1] == len(theirs.text) and theirs.token_ends == sorted(theirs.token_ends)
