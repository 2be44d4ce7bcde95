"""`minisigma serve` as a hostile client meets it, on 127.0.0.1: no key or a wrong one, bodies over
the size limit (answered from the headers), slowloris connections, every invalid request field,
a prompt too long to tokenize, and start-up without a key."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest
import requests

from synth.backends import BackendError, OpenAIBackend
from model.server import read_api_key
from minisigma.core.errors import UserError
from tests.synth_helpers import REPO, ServeProcess, build_tiny_checkpoint

KEY = "sk-test-" + secrets.token_hex(16)
MAX_CONNECTIONS = 16
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), steps=10)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    s = ServeProcess(checkpoint, max_batch=2, log_dir=tmp_path_factory.mktemp("serve-logs"), api_key=KEY,
                     extra=["--max-body-bytes", str(64 << 10), "--header-timeout", str(HEADER_TIMEOUT),
                            "--body-timeout", "2", "--max-connections", str(MAX_CONNECTIONS)])
    yield s
    s.close()
    log = open(s.log.name).read()
    assert "Traceback" not in log, log[-3000:]


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def chat(**kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": "list all files"}], "max_tokens": 4, **kw}


def _raw(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return out


# --------------------------------------------------------------------------- key
def test_api_key_none_wrong_right(server):
    url = server.url + "/v1/chat/completions"
    for headers in ({}, auth("sk-wrong-" + "0" * 32), {"Authorization": KEY}, auth(KEY[:-1])):
        r = requests.post(url, json=chat(), headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert requests.get(server.url + "/stats", timeout=30).status_code == 401
    assert requests.get(server.url + "/health", timeout=30).status_code == 200  # liveness stays open
    ok = requests.post(url, json=chat(temperature=0), headers=auth(), timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    assert server.stats()["unauthorized"] >= 6


def test_synth_client_sends_the_key(server, monkeypatch):
    monkeypatch.setenv("MINISIGMA_TEST_SERVE_KEY", KEY)
    out = OpenAIBackend(server.url, "tiny", api_key_env="MINISIGMA_TEST_SERVE_KEY").chat(
        [{"role": "user", "content": "show free disk space"}], temperature=0, max_tokens=4)
    assert out.completion_tokens > 0
    with pytest.raises(BackendError, match="HTTP 401"):
        OpenAIBackend(server.url, "tiny").chat([{"role": "user", "content": "hi"}], max_tokens=4)


# --------------------------------------------------------------------------- size
def test_oversized_body_is_refused_from_the_headers(server):
    for length in (10 ** 12, (64 << 10) + 1, 100 << 20):
        # only the headers are sent: the 413 comes without the server waiting for any body
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()
        out = _raw(server.port, head)
        assert out.startswith(b"HTTP/1.1 413"), out[:200]
        assert b'"code": 413' in out
    # a chunked body with no length is cut off at the same size
    big = b'{"prompt": "' + b"a" * (80 << 10) + b'"}'
    r = requests.post(server.url + "/v1/completions", data=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                      headers={**auth(), "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert server.stats()["too_large"] >= 4


def test_huge_prompt_is_refused_before_tokenizing(server):
    before = server.stats().get("prompts_tokenized", 0)
    # under the body limit, but more characters than the context can hold in tokens
    for body in ({"prompt": "ab " * 20000, "max_tokens": 4},
                 chat(messages=[{"role": "user", "content": "x" * 30000}, ]),
                 chat(messages=[{"role": "system", "content": "y" * 15000},
                                {"role": "user", "content": "z" * 15000}])):
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        r = requests.post(server.url + path, json=body, headers=auth(), timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] in ("prompt", "messages") and "too long" in err["message"]
    assert server.stats().get("prompts_tokenized", 0) == before  # none of them was tokenized
    # an 8 MB prompt is over the body limit: 413 from the headers
    r = requests.post(server.url + "/v1/completions", json={"prompt": "a" * (8 << 20)}, headers=auth(), timeout=60)
    assert r.status_code == 413


# --------------------------------------------------------------------------- fields
# (field, the value as raw JSON: NaN, Infinity and 1e400 as a client would write them)
INVALID = [
    ("temperature", "NaN"), ("temperature", "Infinity"), ("temperature", "-1"), ("temperature", '"hot"'),
    ("temperature", "true"), ("temperature", "3"), ("top_p", "0"), ("top_p", "1.5"), ("top_p", '"x"'),
    ("top_k", "-5"), ("top_k", "2.5"), ("seed", str(2 ** 80)), ("seed", "-1"), ("seed", "1.5"), ("seed", '"7"'),
    ("max_tokens", "1e400"), ("max_tokens", "0"), ("max_tokens", "2.0"), ("max_tokens", str(10 ** 9)),
    ("max_tokens", '"64"'), ("max_completion_tokens", "-3"), ("n", '"two"'), ("n", "2"), ("stop", "5"),
    ("stop", "[1, 2]"), ("stop", '[""]'), ("stop", '["a", "b", "c", "d", "e"]'), ("stream", '"yes"'),
    ("stream_options", "3"), ("model", "7"),
]


@pytest.mark.parametrize("name,value", INVALID, ids=[f"{n}={v}"[:40] for n, v in INVALID])
def test_invalid_field_is_a_400_naming_it(server, name, value):
    body = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "%s": %s}' % (
        name, value)
    if name == "model":
        body = body.replace('"model": "tiny", ', "")
    if name == "max_tokens":
        body = body.replace('"max_tokens": 4, ', "")
    r = requests.post(server.url + "/v1/chat/completions", data=body,
                      headers={**auth(), "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == name and f"'{name}'" in err["message"], err


@pytest.mark.parametrize("body,param", [
    (b'{"messages": "hi"}', "messages"),
    (b'{"messages": []}', "messages"),
    (b'{"messages": [5]}', "messages[0]"),
    (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": [{"text": 5}]}]}', "messages[0].content[0]"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}', "messages"),
    (b'{"messages": [{"role": "user", "content": "a"' + b"}" * 3, None),  # not JSON
    (b"[" * 30000 + b"]" * 30000, None),  # nesting deeper than the JSON parser goes
    (b'{"seed": 1' + b"0" * 5000 + b"}", None),  # an integer too long to parse
    (b"\xff\xfe", None),  # not UTF-8
    (b"[1, 2]", None),  # not an object
], ids=["messages-str", "messages-empty", "message-int", "role", "content-int", "content-part", "system-late",
        "not-json", "deep", "long-int", "not-utf8", "not-object"])
def test_invalid_body_is_a_400(server, body, param):
    r = requests.post(server.url + "/v1/chat/completions", data=body,
                      headers={**auth(), "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_invalid_text_prompt_is_a_400(server):
    for prompt in (None, "", 5, ["a", "b"], {"x": 1}):
        r = requests.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4},
                          headers=auth(), timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", (prompt, r.text)


# --------------------------------------------------------------------------- slow clients
def test_slowloris_connections_are_not_all_held(server):
    """50 connections sending a header byte every 0.5 s: over the cap they are refused (503) at
    once, the rest are closed at the header deadline; then the server answers normally."""
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.setblocking(False)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    open_ = {id(s): s for s in socks}
    refused = 0
    for _ in range(120):  # bounded: 60 s at most; the header deadline is 2 s
        for s in list(open_.values()):
            try:
                data = s.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data is not None:
                refused += data.startswith(b"HTTP/1.1 503")
                s.close()
                del open_[id(s)]
                continue
            try:
                s.send(b"X")  # one more byte of a header that never ends
            except OSError:
                s.close()
                del open_[id(s)]
        if not open_:
            break
        time.sleep(0.5)
    held = len(open_)
    for s in open_.values():
        s.close()
    assert held == 0, f"{held} slow connections are still held"
    assert refused >= 1  # the cap was reached
    st = server.stats()
    assert st["connections_refused"] >= 1
    r = requests.post(server.url + "/v1/chat/completions", json=chat(), headers=auth(), timeout=60)
    assert r.status_code == 200


def test_slow_body_is_a_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
        out = b""
        for _ in range(60):  # a byte every 0.5 s, until the server answers (bounded: 30 s)
            s.settimeout(0.5)
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                s.send(b" ")
                continue
            out += chunk
            if not chunk or b"\r\n\r\n" in out:
                break
    assert out.startswith(b"HTTP/1.1 408"), out[:200]


# --------------------------------------------------------------------------- start-up
def _serve(checkpoint, *args, env_key=None):
    env = {k: v for k, v in os.environ.items() if k != "MINISIGMA_API_KEY"}
    env["PYTHONPATH"] = str(REPO)
    if env_key is not None:
        env["MINISIGMA_API_KEY"] = env_key
    return subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "serve",
                           "--checkpoint", str(checkpoint), "--port", "0", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_no_key_refuses_to_start(checkpoint, tmp_path):
    r = _serve(checkpoint)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: no API key: set MINISIGMA_API_KEY")
    r = _serve(checkpoint, "--no-auth", "--host", "0.0.0.0")
    assert r.returncode == 2 and "--no-auth serves only on a loopback address" in r.stderr
    r = _serve(checkpoint, env_key="short")
    assert r.returncode == 2 and "error: MINISIGMA_API_KEY: the API key must be at least 16" in r.stderr
    r = _serve(checkpoint, "--api-key-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing'}:")
    assert "Traceback" not in r.stderr


def test_key_from_file_or_environment(tmp_path):
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    assert read_api_key(f, env={}) == KEY
    assert read_api_key(None, env={"MINISIGMA_API_KEY": KEY}) == KEY
    assert read_api_key(f, env={"MINISIGMA_API_KEY": "x" * 20}) == KEY  # the file wins
    assert read_api_key(None, env={}) is None
    f.write_text("")
    with pytest.raises(UserError, match="at least 16"):
        read_api_key(f, env={})


@pytest.mark.parametrize("request_bytes", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",  # TLS hello
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line too long
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",  # header too long
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["tls", "long-line", "long-header", "length-abc", "length-negative", "length-and-chunked", "bad-chunk"])
def test_malformed_http_is_answered_400(server, request_bytes):
    out = _raw(server.port, request_bytes)
    assert out.split(b" ", 2)[1] in (b"400", b"413", b"431"), out[:200]
    assert requests.get(server.url + "/health", timeout=30).status_code == 200
