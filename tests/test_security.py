"""What the server must never do: listen beyond loopback without a token, read a file the client did
not open, run code from a checkpoint, or talk to the network beyond the backend it was given.

Network and file access of server processes are watched by `tests/netguard/sitecustomize.py` (an
audit hook that refuses outbound connections and logs them, and logs opens of one watched path).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.probe import LspError, ServerGone, SyncClient, probed_command
from engine.loading import CheckpointError, load_model
from fim_lsp.cli import build_parser
from lsp_server.address import is_loopback, parse_listen
from tests.conftest import REPO
from tests.test_server_e2e import TINY

NETGUARD = REPO / "tests" / "netguard"
INVALID_PARAMS, INVALID_REQUEST = -32602, -32600
SERVE = [sys.executable, "-m", "fim_lsp.cli", "serve", "--model", TINY, "--dtype", "float32", "--backend", "torch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guarded_env(log: Path, watch: list[Path] | None = None) -> dict[str, str]:
    """The environment of a server whose outbound connections are refused and written to `log`
    (and whose opening of any `watch` path, however spelled, is written there too)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(NETGUARD), str(REPO)]), FIM_LSP_NETGUARD_LOG=str(log))
    if watch:
        env["FIM_LSP_NETGUARD_WATCH"] = os.pathsep.join(str(p) for p in watch)
    return env


def guard_events(log: Path, pid: int) -> list[str]:
    """What the guard wrote for process `pid`, after checking it was loaded there (the log must exist)."""
    assert log.is_file(), "the guard never ran: no log"
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()]
    mine = [event for who, event in lines if who == str(pid)]
    assert mine[:1] == ["guard"], f"the guard was not loaded in process {pid}: {lines}"
    return mine[1:]


def test_the_guard_records_what_it_refuses_and_opens_by_resolved_path(tmp_path):
    """The positive control of the guard itself: a connect beyond loopback, a DNS lookup and an
    opening of a watched file by another spelling are all written down."""
    log, watched = tmp_path / "guard.log", tmp_path / "dir" / "watched.txt"
    watched.parent.mkdir()
    watched.write_text("x")
    (tmp_path / "link").symlink_to(watched.parent)
    script = ("import socket\n"
              "for target in (('203.0.113.7', 9), ('example.com', 80)):\n"
              "    try: socket.create_connection(target, timeout=1)\n"
              "    except PermissionError: pass\n"
              f"open({str(tmp_path / 'dir' / '.' / 'watched.txt')!r}).close()\n"
              f"open({str(tmp_path / 'link' / 'watched.txt')!r}).close()\n"
              "open('dir//watched.txt').close()\n")
    done = subprocess.run([sys.executable, "-c", script], env=guarded_env(log, watch=[watched]), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(log.read_text().split(" ", 1)[0])
    assert guard_events(log, pid) == ["socket.connect 203.0.113.7:9", "socket.getaddrinfo example.com",
                                      *[f"open {watched}"] * 3]


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses on which process `pid`'s network namespace listens on TCP `port` (from /proc)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def wait_listening(proc: subprocess.Popen, port: int, timeout_s: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while not (addresses := listening_addresses(proc.pid, port)):
        assert proc.poll() is None, f"the server exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        time.sleep(0.1)
    return addresses


# ------------------------------------------------------------------------------------------------
# serve --tcp and the engine daemon


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.10"])
def test_serve_tcp_beyond_loopback_without_a_token_refuses_to_start(host):
    done = subprocess.run([*SERVE, "--tcp", f"{host}:{free_port()}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "is reachable from other machines; pass --token-file PATH or set $FIM_LSP_TOKEN" in done.stderr, done.stderr


def test_listen_addresses_default_to_loopback():
    assert parse_listen(":2087") == ("127.0.0.1", 2087) and parse_listen("2087") == ("127.0.0.1", 2087)
    engine_host, _ = parse_listen(build_parser().parse_args(["engine"]).listen)
    assert is_loopback(engine_host), "the engine daemon listens on loopback by default"
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.0.0.1")] == [
        True, True, True, False, False, False]


def test_serve_tcp_without_a_host_listens_on_loopback_only():
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--tcp", f":{port}"], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_listening(proc, port) == {"127.0.0.1"}
        client = SyncClient.connect("127.0.0.1", port)
        assert client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})["capabilities"]
        assert client.status()["state"] == "not started"
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


def serve_tcp_with_token(port: int, *extra: str) -> subprocess.Popen:
    """A server beyond loopback whose token comes from the environment (not the command line)."""
    proc = subprocess.Popen([*SERVE, "--tcp", f"0.0.0.0:{port}", *extra], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, FIM_LSP_TOKEN="s3cret"))
    assert wait_listening(proc, port) == {"0.0.0.0"}
    return proc


def initialize_with(client: SyncClient, options: dict) -> dict:
    return client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                         "initializationOptions": options})


def test_serve_tcp_beyond_loopback_refuses_a_client_without_the_token():
    port = free_port()
    proc = serve_tcp_with_token(port)
    try:
        intruder = SyncClient.connect("127.0.0.1", port)
        for options in ({}, {"token": "guess"}):
            with pytest.raises(LspError) as refused:
                initialize_with(intruder, options)
            assert refused.value.code == INVALID_REQUEST and "initializationOptions.token" in refused.value.message
        with pytest.raises(LspError, match="did not present the server's token"):
            intruder.status()
        intruder.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_a_second_connection_cannot_take_over_a_tcp_session():
    port = free_port()
    proc = serve_tcp_with_token(port)
    try:
        client = SyncClient.connect("127.0.0.1", port)
        initialize_with(client, {"token": "s3cret"})
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": "file:///work/secret.py", "languageId": "python", "version": 1, "text": "PASSWORD = 'x'\n"}})
        intruder = SyncClient.connect("127.0.0.1", port)
        with pytest.raises(ServerGone):  # closed at once: no session, no answers meant for the client
            intruder.status()
        status = client.status()
        assert status["open_documents"] == 1 and status["state"] == "not started"
        assert intruder.notifications == []
        client.close()
        # the session ended; the server serves the next one, which sees nothing of the last
        nxt = connect_and_initialize(port, {"token": "s3cret"})
        assert nxt.status()["open_documents"] == 0
        nxt.close()
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)


def connect_and_initialize(port: int, options: dict, timeout_s: float = 120) -> SyncClient:
    """Connect and initialize, retrying while the server refuses (another session holds it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        client = SyncClient.connect("127.0.0.1", port)
        try:
            initialize_with(client, options)
            return client
        except (ServerGone, OSError):
            client.sock.close()
            assert time.monotonic() < deadline, "the server never took a new session"


def test_tcp_token_from_a_file_and_the_deprecated_flag_warns(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("fr0m-file\n")
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--tcp", f"0.0.0.0:{port}", "--token-file", str(secret)], stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_listening(proc, port)
        with pytest.raises(LspError, match="initializationOptions.token"):
            initialize_with(SyncClient.connect("127.0.0.1", port), {"token": "guess"})
        client = connect_and_initialize(port, {"token": "fr0m-file"})
        assert "fr0m-file" not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
        client.close()
    finally:
        proc.kill()
        proc.wait(10)
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--tcp", f"127.0.0.1:{port}", "--token", "old"], stderr=subprocess.PIPE, text=True)
    try:
        assert "--token is deprecated" in proc.stderr.readline()
        connect_and_initialize(port, {"token": "old"}).close()
    finally:
        proc.kill()
        proc.wait(10)


def test_the_engine_daemon_takes_its_secret_from_a_file_or_the_environment_never_the_command_line(tmp_path):
    import httpx

    secret = tmp_path / "token"
    secret.write_text("d43mon-file\n")
    engine = [sys.executable, "-m", "fim_lsp.cli", "engine", "--model", TINY, "--dtype", "float32"]
    for how, extra, env in (("file", ["--token-file", str(secret)], {}),
                            ("environment", [], {"FIM_LSP_TOKEN": "d43mon-env"})):
        port = free_port()
        proc = subprocess.Popen([*engine, "--listen", f"0.0.0.0:{port}", *extra], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **env})
        try:
            wait_listening(proc, port)
            url = f"http://127.0.0.1:{port}/v1/models"
            assert httpx.get(url, headers={"Authorization": "Bearer guess"}).status_code == 401, how
            expected = "d43mon-file" if how == "file" else "d43mon-env"
            assert httpx.get(url, headers={"Authorization": f"Bearer {expected}"}).status_code == 200, how
            assert expected not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        finally:
            proc.kill()
            proc.wait(10)
    refused = subprocess.run([*engine, "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "FIM_LSP_TOKEN"})
    assert refused.returncode == 2 and "pass --token-file PATH or set $FIM_LSP_TOKEN" in refused.stderr


def test_stalled_oversized_and_truncated_connections_never_hold_or_stop_the_tcp_server(tmp_path):
    """Half a header and silence, a 70 KB header line, a truncated body: each connection is dropped
    (the first two after the handshake timeout), the server keeps listening, and a real client then
    gets a session whose completion is the oracle's."""
    from lsp_server import pipeline
    from lsp_server.config import CompletionSettings, ModelConfig
    from tests.test_server_e2e import Mirror

    port = free_port()
    proc = serve_tcp_with_token(port, "--handshake-timeout", "1")
    try:
        wait_listening(proc, port)
        for attack in (b"Content-Le", b"X-Long: " + b"x" * 70_000 + b"\r\n",
                       b"Content-Length: 100\r\n\r\n{\"jsonrpc\""):
            attacker = socket.create_connection(("127.0.0.1", port))
            attacker.sendall(attack)
            if attack.startswith(b"Content-Length"):
                attacker.close()  # truncated: the stream ends inside the body
            client = connect_and_initialize(port, {"token": "s3cret"})
            if not attack.startswith(b"Content-Length"):
                attacker.settimeout(60)
                try:  # the server dropped the stalled connection (after logging its framing error to it)
                    while attacker.recv(65536):
                        pass
                except ConnectionResetError:
                    pass
                attacker.close()
            client.close()
            assert proc.poll() is None
        client = connect_and_initialize(port, {"token": "s3cret", "maxNewTokens": 6})
        client.notify("initialized", {})
        client.wait_ready()
        uri, text = "file:///tcp/ok.py", "def add(a, b):\n    return "
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": text}})
        answer = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 2}})
        mirror = Mirror(None, pipeline.load_model(ModelConfig(model=TINY, backend="torch", dtype="float32")),
                        encoding="utf-16", settings=CompletionSettings(max_new_tokens=6))
        mirror.docs[uri] = text
        expected = mirror.expect(uri, len(text)).items
        assert [i["insertText"] for i in answer["items"]] == [i.insert_text for i in expected]
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------------------------
# Unknown documents are never read from disk


def test_a_document_never_opened_is_not_read_from_disk(tmp_path):
    """Watched by resolved path in the server process, with a positive control in the same run: the
    server's own opening of its model's config (watched through a `/./` spelling) is seen."""
    canary = f"CANARY-{uuid.uuid4().hex}"
    secret = tmp_path / "secret.py"
    secret.write_text(f"API_KEY = '{canary}'\n")
    control = Path(TINY) / "." / "config.json"  # the server reads this one while loading
    log = tmp_path / "guard.log"
    client = SyncClient.spawn(probed_command("--model", TINY, "--dtype", "float32", "--backend", "torch"),
                              env=guarded_env(log, watch=[secret, control]))
    spellings = [secret.as_uri(), f"file://{tmp_path}/./secret.py", f"file://{tmp_path}//secret.py",
                 f"file://{tmp_path}/sub/../secret.py"]
    try:
        client.start_session("utf-16", {"maxNewTokens": 6})
        for uri in spellings:
            position = {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 4}}
            for method, params in [("textDocument/inlineCompletion", {**position, "context": {"triggerKind": 1}}),
                                   ("textDocument/completion", position)]:
                with pytest.raises(LspError) as refused:
                    client.request(method, params)
                assert refused.value.code == INVALID_PARAMS and "is not open" in refused.value.message, uri
            # a change or close for it is ignored; it never becomes a document
            client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
                {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "#"}]})
            client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            assert client.texts([uri]) == {uri: None}
        # another document's completion draws neighbour snippets from open documents only
        other = (tmp_path / "main.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": other, "languageId": "python", "version": 1, "text": "from secret import API_KEY\nkey = "}})
        answer = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": other}, "position": {"line": 1, "character": 6}, "context": {"triggerKind": 1}})
        assert canary not in str(answer)
        assert client.status()["open_documents"] == 1
    finally:
        assert client.close() == 0
    opened = [e for e in guard_events(log, client.proc.pid) if e.startswith("open ")]
    assert f"open {os.path.realpath(control)}" in opened, "positive control: the guard sees the server's reads"
    assert f"open {secret}" not in opened, opened
    assert canary not in str(client.notifications) and canary not in client.stderr_text()


# ------------------------------------------------------------------------------------------------
# Checkpoints never run code


class RunsCode:
    """A pickle payload that would create a directory when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def pickled_checkpoint(directory: Path, extra: dict) -> Path:
    """The tiny kit checkpoint with its weights as pytorch_model.bin (plus `extra` entries)."""
    directory.mkdir()
    for file in Path(TINY).iterdir():
        if file.suffix == ".json":
            shutil.copy(file, directory / file.name)
    torch.save({**load_file(str(Path(TINY) / "model.safetensors")), **extra}, directory / "pytorch_model.bin")
    return directory


def test_a_pickle_of_plain_tensors_loads(tmp_path):
    loaded = load_model(str(pickled_checkpoint(tmp_path / "plain", {})), torch.device("cpu"), torch.float32)
    reference = load_model(TINY, torch.device("cpu"), torch.float32)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_a_pickle_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    checkpoint = pickled_checkpoint(tmp_path / "evil", {"transformer.extra": RunsCode(marker)})
    with pytest.raises(CheckpointError) as refused:
        load_model(str(checkpoint), torch.device("cpu"), torch.float32)
    message = str(refused.value)
    assert message.startswith(f"refused {checkpoint / 'pytorch_model.bin'}: this pickle needs more than tensors")
    assert "posix.mkdir" in message and "convert the checkpoint to model.safetensors" in message
    assert "weights_only` set to `False`" not in message, "no advice to switch the protection off"
    assert not marker.exists(), "unpickling ran the payload"


# ------------------------------------------------------------------------------------------------
# No network beyond the configured backend


def test_a_session_makes_no_outbound_connection(tmp_path):
    log = tmp_path / "guard.log"
    client = SyncClient.spawn(SERVE, env=guarded_env(log))
    try:
        client.start_session("utf-16", {"maxNewTokens": 6})
        uri = (tmp_path / "a.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "import os\n\ndef main():\n    path = "}})
        answer = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 3, "character": 11}, "context": {"triggerKind": 1}})
        assert isinstance(answer["items"], list)
        client.notify("workspace/didChangeConfiguration", {"settings": {"maxNewTokens": 4, "temperature": 0.5}})
        assert client.status()["config"]["max_new_tokens"] == 4
    finally:
        assert client.close() == 0, client.stderr_text()[-3000:]
    assert guard_events(log, client.proc.pid) == [], f"outbound traffic: {log.read_text()}"
    # the positive control, in this test: the same guard in the same environment writes down an attempt
    done = subprocess.run([sys.executable, "-c", "import socket\ntry: socket.create_connection(('203.0.113.7', 9))\n"
                           "except PermissionError: print('refused')"], env=guarded_env(log), capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "refused" and "socket.connect 203.0.113.7:9" in log.read_text()


def test_the_only_outbound_destination_is_the_configured_backend(tmp_path):
    log = tmp_path / "guard.log"
    backend = "203.0.113.7:8000"  # TEST-NET-3: unroutable; the guard refuses it and writes it down
    client = SyncClient.spawn([*SERVE[:-2], "--backend", "openai", "--url", f"http://{backend}"], env=guarded_env(log))
    try:
        client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                      "initializationOptions": {"remoteTimeoutMs": 2000}})
        client.notify("initialized", {})
        deadline = time.monotonic() + 120
        while client.status()["state"] in ("not started", "loading"):
            assert time.monotonic() < deadline, "the backend never finished loading"
            time.sleep(0.1)
        uri = (tmp_path / "a.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "x = "}})
        client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 0, "character": 4}, "context": {"triggerKind": 1}})
    finally:
        client.close()
    attempts = guard_events(log, client.proc.pid)
    assert attempts and set(attempts) == {f"socket.connect {backend}"}, attempts
