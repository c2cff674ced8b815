"""Abuse at the edge, against the real binary over raw sockets: each case gets a clear 4xx
(or the connection is closed) in bounded time, and the server's memory stays bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx

# The server's deadlines (ServerConfig's defaults): headers within 30 s, the body within 60 s.
HEADER_DEADLINE_S = 30
BODY_DEADLINE_S = 60

MESSAGE = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exchange(port: int, data: bytes, timeout: float = 30) -> tuple[float, bytes]:
    """Send `data` on a new connection; the seconds until the answer's first bytes, and them."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        started = time.monotonic()
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything
        out = s.recv(65536)
        return time.monotonic() - started, out


def post(path: str, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n".encode()
        + extra
        + f"content-length: {n}\r\n\r\n".encode()
        + body
    )


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def error_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def slow_loris(port: int, result: dict) -> None:
    """One header byte a second, never the end of the headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        while time.monotonic() - started < HEADER_DEADLINE_S + 30:
            try:
                s.sendall(b"a")
                s.settimeout(1)
                if s.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        result["closed_after"] = time.monotonic() - started


def slow_body(port: int, result: dict) -> None:
    """Whole headers, a promise of 1000 bytes, one byte, then nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_DEADLINE_S + 30) as s:
        started = time.monotonic()
        s.sendall(post("/v1/messages", b"{", length=1000))
        result["answer"] = s.recv(65536)
        result["after"] = time.monotonic() - started


def test_abuse_gets_bounded_answers(smol_server):
    port = smol_server.port
    pid = smol_server.proc.pid
    rss_before = rss_kib(pid)
    loris, body = {}, {}
    threads = [
        threading.Thread(target=slow_loris, args=(port, loris), daemon=True),
        threading.Thread(target=slow_body, args=(port, body), daemon=True),
    ]
    for t in threads:
        t.start()

    # A flood of headers, and one header of a megabyte: 431, at once.
    flood = b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    for extra in (flood, b"x-big: " + b"a" * 1_000_000 + b"\r\n"):
        took, answer = exchange(port, post("/v1/messages", json.dumps(MESSAGE).encode(), extra))
        assert status_of(answer) == 431 and took < 5, (took, answer[:200])

    # JSON nested 10,000 deep, on both APIs: 400 with the parser's reason, fast.
    deep = b"[" * 10_000 + b"]" * 10_000
    for path, doc in (
        ("/v1/messages", b'{"model":"m","max_tokens":4,"messages":[{"role":"user","content":' + deep + b"}]}"),
        ("/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":' + deep + b"}]}"),
        ("/v1/messages/count_tokens", b'{"model":"m","messages":[{"role":"user","content":' + deep + b"}]}"),
    ):
        took, answer = exchange(port, post(path, doc))
        assert status_of(answer) == 400 and took < 5, (path, took, answer[:300])
        assert "recursion limit" in json.dumps(error_of(answer)), answer[:300]

    # Invalid UTF-8 in a string: 400.
    bad = json.dumps(MESSAGE).encode().replace(b'"hi"', b'"h\xff\xfei"')
    _, answer = exchange(port, post("/v1/messages", bad))
    assert status_of(answer) == 400, answer[:300]
    assert error_of(answer)["error"]["type"] == "invalid_request_error"

    # A Content-Length of 2 GB: 413 before any of it is read.
    took, answer = exchange(port, post("/v1/messages", b"{", length=2_000_000_000))
    assert status_of(answer) == 413 and took < 5, (took, answer[:300])
    assert error_of(answer)["error"]["type"] == "request_too_large"

    # While all that goes on, a real client is served.
    r = httpx.post(f"{smol_server.url}/v1/messages", json=MESSAGE, timeout=120)
    assert r.status_code == 200, r.text

    for t in threads:
        t.join(timeout=BODY_DEADLINE_S + 60)
    assert "closed_after" in loris, "the slow-loris thread did not finish"
    assert loris["closed_after"] < HEADER_DEADLINE_S + 15, loris
    assert "answer" in body, "the slow-body thread did not finish"
    assert status_of(body["answer"]) == 408, body
    assert body["after"] < BODY_DEADLINE_S + 15, body
    # Bounded memory: none of it grew the server by more than a few buffers' worth.
    grown = rss_kib(pid) - rss_before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
