"""The remote backend's transport as a team's network has it: a proxy named in the environment, a
server whose certificate a private CA signed, and a cancelled request that must really hang up.

Everything listens on 127.0.0.1: the scripted OpenAI-compatible server of test_openai_backend, a
forwarding proxy started here (plain requests relayed, CONNECT tunnelled), and a CA made here with
trustme.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme

from engine.api import BackendError, Cancelled, CancelToken
from engine.backends.openai_backend import RemoteConfig, load_backend
from fim_lsp.cli import build_parser
from lsp_server import pipeline
from lsp_server.config import ModelConfig, ServerConfig, apply_settings, config_from_args
from tests.test_openai_backend import FakeServer, Seen, answer, request, send

PROXY_VARIABLES = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"]


class Proxy:
    """A forwarding HTTP proxy on 127.0.0.1 that writes down each request it carries."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_CONNECT(self) -> None:  # a tunnel for https: bytes both ways until either side closes
                proxy.seen.append(f"CONNECT {self.path}")
                host, port = self.path.rsplit(":", 1)
                assert host == "127.0.0.1", "this proxy reaches loopback only"
                upstream = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                sockets = [self.connection, upstream]
                while True:
                    readable, _, _ = select.select(sockets, [], [], 10)
                    if not readable:
                        break
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            upstream.close()
                            self.close_connection = True
                            return
                        (upstream if sock is self.connection else self.connection).sendall(data)

            def forward(self) -> None:  # a plain request in absolute form, relayed whole
                proxy.seen.append(f"{self.command} {self.path}")
                target = urlsplit(self.path)
                assert target.hostname == "127.0.0.1", "this proxy reaches loopback only"
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                upstream.request(self.command, target.path, body=body or None, headers=headers)
                reply = upstream.getresponse()
                payload = reply.read()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def clean_env(monkeypatch):
    """No proxy or CA variables but those a test sets (upper- and lower-case spellings)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy():
    running = Proxy()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_fake(ca: trustme.CA):
    """The scripted server on https, its certificate for 127.0.0.1 signed by a CA made here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeServer(tls=context).start()
    yield server
    server.stop()


@pytest.fixture
def fake():
    server = FakeServer().start()
    yield server
    server.stop()


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "team-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_http_proxy_from_the_environment_carries_every_request(fake: FakeServer, proxy: Proxy, clean_env):
    clean_env.setenv("HTTP_PROXY", proxy.url)
    fake.reply = answer("3.14 * r * r")
    backend = load_backend(url=fake.url, environ={})
    assert backend.complete(request()).text == "3.14 * r * r"
    assert proxy.seen == [f"GET {fake.url}/v1/fim-lsp/info", f"GET {fake.url}/v1/models",
                          f"POST {fake.url}/v1/completions"]
    clean_env.setenv("NO_PROXY", "127.0.0.1")  # a host named in NO_PROXY is reached directly
    assert load_backend(url=fake.url, environ={}).complete(request()).text == "3.14 * r * r"
    assert len(proxy.seen) == 3 and len(fake.completions()) == 2


def test_https_through_a_proxy_tunnel_to_a_server_a_private_ca_signed(tls_fake: FakeServer, proxy: Proxy, ca,
                                                                      tmp_path: Path, clean_env):
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    tls_fake.reply = answer("r ** 2")
    backend = load_backend(url=tls_fake.url, remote=RemoteConfig(ca_bundle=ca_file(ca, tmp_path)), environ={})
    assert backend.mode == "openai" and backend.complete(request()).text == "r ** 2"
    port = tls_fake.httpd.server_address[1]
    assert proxy.seen == [f"CONNECT 127.0.0.1:{port}"], "one tunnel, kept alive for the probe and the request"
    assert [r.path for r in tls_fake.requests] == ["/v1/fim-lsp/info", "/v1/models", "/v1/completions"]


def test_a_private_ca_is_trusted_from_the_setting_or_ssl_cert_file_and_refused_otherwise(
        tls_fake: FakeServer, ca, tmp_path: Path, clean_env):
    tls_fake.reply = answer("r * r")
    untrusting = load_backend(url=tls_fake.url, remote=RemoteConfig(retries=0), environ={})
    with pytest.raises(BackendError) as caught:
        untrusting.complete(request())
    assert str(caught.value).startswith(f"the completion server at {tls_fake.url} has a certificate this machine "
                                        f"does not trust (")
    assert str(caught.value).endswith("); set caBundle to its CA's PEM file, or $SSL_CERT_FILE")
    assert tls_fake.completions() == [], "nothing is sent over an untrusted connection"
    pem = ca_file(ca, tmp_path)
    # the setting, from the editor as from the command line
    configured = pipeline.load_model(ModelConfig(url=tls_fake.url, ca_bundle=pem, remote_model="m"))
    assert configured.complete(request()).text == "r * r"
    clean_env.setenv("SSL_CERT_FILE", pem)  # as every Python HTTP tool reads it
    assert load_backend(url=tls_fake.url, environ={}).complete(request()).text == "r * r"
    with pytest.raises(BackendError, match="caBundle '.*missing.pem': No such file or directory; give a PEM file"):
        load_backend(url=tls_fake.url, remote=RemoteConfig(ca_bundle=str(tmp_path / "missing.pem")))


class HangUpWatch:
    """A reply that sends `chunks` as events (or nothing, for a plain answer still being computed),
    then waits for the client to close the connection and notes that it did."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.started, self.closed = threading.Event(), threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        if seen.body.get("stream"):
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()  # no length: the events run until the server stops generating
            for chunk in self.chunks:
                handler.wfile.write(f"data: {json.dumps({'choices': [{'text': chunk}]})}\n\n".encode())
            handler.wfile.flush()
        handler.close_connection = True
        self.started.set()
        handler.connection.settimeout(10)
        try:
            if handler.connection.recv(1) == b"":  # the client hung up: a server stops generating here
                self.closed.set()
        except ConnectionResetError:
            self.closed.set()
        except OSError:
            pass


@pytest.mark.parametrize("stream", [True, False])
def test_a_cancelled_request_closes_its_connection_and_the_server_sees_it(fake: FakeServer, stream: bool):
    watch = HangUpWatch(["3.14", " * r"])
    fake.reply = watch
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=stream, read_timeout_s=20), environ={})
    cancel = CancelToken()
    threading.Thread(target=lambda: watch.started.wait(10) and cancel.cancel(), daemon=True).start()
    with pytest.raises(Cancelled):
        backend.complete(request(), cancel)
    assert watch.closed.wait(5), "the server saw the connection close"
    assert backend.cache_stats()["cancelled"] == 1
    fake.reply = answer("r * r")
    assert backend.complete(request()).text == "r * r", "the next request opens a new connection"


def test_a_stop_string_in_a_stream_hangs_up_at_once(fake: FakeServer):
    watch = HangUpWatch(["3.14", " * r\n\n", "never"])
    fake.reply = watch
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=True, read_timeout_s=20), environ={})
    result = backend.complete(request())
    assert (result.text, result.stop_reason) == ("3.14 * r", "stop_string")
    assert watch.closed.wait(5), "the server saw the connection close without waiting for its end"


def test_a_server_that_ignores_stream_is_read_as_one_answer(fake: FakeServer):
    fake.reply = lambda handler, seen: send(handler, 200, {"choices": [{"text": "r * r", "finish_reason": "stop"}],
                                                           "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    result = load_backend(url=fake.url, remote=RemoteConfig(stream=True), environ={}).complete(request())
    assert (result.text, result.prompt_tokens) == ("r * r", 5)


def test_the_ca_bundle_comes_from_the_command_line_as_from_the_settings():
    args = build_parser().parse_args(["serve", "--url", "https://team-box:8000", "--ca-bundle", "/etc/team/ca.pem"])
    assert config_from_args(args).model == ModelConfig(url="https://team-box:8000", ca_bundle="/etc/team/ca.pem",
                                                      key_url="https://team-box:8000")
    assert apply_settings(ServerConfig(), {"caBundle": "/etc/team/ca.pem"}).model.ca_bundle == "/etc/team/ca.pem"
