#!/usr/bin/env python3
"""Hours of agent traffic against `pensieve serve`, above capacity, with the faults that
real clients bring; reports whether anything was lost or leaked.

Each client thread loops until the deadline over a weighted mix of:
- Anthropic `/v1/messages` and OpenAI `/v1/chat/completions`, streaming and not, some with
  tools; `/v1/completions`; `/v1/messages/count_tokens`;
- streams cancelled after a few events, requests abandoned at a random moment (the socket
  closed before the answer), slow readers (a small receive buffer read a little at a time);
- oversize bodies (a 2 GB Content-Length) and malformed JSON.
More clients than `--parallel` + `--queue`, so some requests get 529.

Every request ends in one of: complete (a whole answer of the right shape), error (a
well-formed error body or stream event), cancelled (by the client, on purpose), lost
(anything else: a reset, a truncated stream, a timeout, a body of the wrong shape), or a
5xx other than 529/503. RSS is sampled all along; after the traffic stops the server
must go back to idle (no running or queued sequence, cache tiers within their budgets),
and a last request must still be answered.

Targets (the exit status is 1 when one is missed): 0 lost, 0 unexpected 5xx, RSS growth
after warm-up under --max-rss-growth, idle at the end, p99 queueing time within the bound
the queue settings give ((queue / parallel + 1) x the p99 service time).

  python3 bench/soak.py --bin $CARGO_TARGET_DIR/release/pensieve \
      --model ~/.cache/pensieve/test-models/SmolLM2-135M-Instruct.Q4_1.gguf --duration 3600
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, free_port, kib_field, log, percentile, read_proc_status, scrape  # noqa: E402

MODEL = "claude-soak"
ALLOWED_5XX = {503, 529}

WORDS = (
    "read the file then edit the function and run the tests again until they pass; "
    "the server keeps a prefix cache of the system prompt and the tools so each turn "
    "starts fast and the agent keeps going for hours without losing an answer"
).split()

TOOLS_ANTHROPIC = [
    {
        "name": "read_file",
        "description": "Read a file from the workspace.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "run",
        "description": "Run a shell command.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
]
TOOLS_OPENAI = [
    {
        "type": "function",
        "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]},
    }
    for t in TOOLS_ANTHROPIC
]


def system_prompt(variant: int) -> str:
    """An agent's long system prompt: a few variants, so the prefix cache has both hits
    and evictions."""
    rng = random.Random(variant)
    return f"You are coding agent #{variant}. " + " ".join(rng.choice(WORDS) for _ in range(350))


def user_turn(rng: random.Random) -> str:
    return f"[{rng.getrandbits(40):x}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 120)))


# --------------------------------------------------------------------------------------------
# outcomes
# --------------------------------------------------------------------------------------------

COMPLETE, ERROR, CANCELLED, LOST, BAD_5XX = "complete", "error", "cancelled", "lost", "5xx"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    lost: list = field(default_factory=list)
    durations: list = field(default_factory=list)

    def add(self, action: str, outcome: str, status: int | None, detail: str = "", seconds: float = 0.0):
        with self.lock:
            key = (action, outcome)
            self.counts[key] = self.counts.get(key, 0) + 1
            if status is not None:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if outcome in (LOST, BAD_5XX):
                self.lost.append(f"{action}: {outcome} {status}: {detail[:300]}")
            if outcome == COMPLETE and action in ("anthropic", "openai_chat", "completions"):
                self.durations.append(seconds)

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)


def is_error_body(api: str, status: int, body: bytes) -> bool:
    """A well-formed error of that API: Anthropic's `{"type":"error","error":{type,message}}`
    or OpenAI's `{"error":{message,type}}`."""
    try:
        d = json.loads(body)
    except ValueError:
        return False
    if not isinstance(d, dict) or not isinstance(d.get("error"), dict):
        return False
    e = d["error"]
    if api == "anthropic":
        return d.get("type") == "error" and isinstance(e.get("type"), str) and isinstance(e.get("message"), str)
    return isinstance(e.get("message"), str) and isinstance(e.get("type"), str)


def classify_status(api: str, status: int, body: bytes) -> tuple[str, str]:
    if status >= 500 and status not in ALLOWED_5XX:
        return BAD_5XX, body[:200].decode(errors="replace")
    if is_error_body(api, status, body):
        return ERROR, ""
    return LOST, f"status {status} without a well-formed error: {body[:200]!r}"


# --------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------


class Client:
    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout

    def connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.timeout)

    def post(self, path: str, body: dict, timeout: float | None = None) -> tuple[int, bytes]:
        conn = self.connect(timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def open_stream(self, path: str, body: dict, rcvbuf: int | None = None):
        conn = self.connect()
        if rcvbuf is not None:
            conn.connect()
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        return conn, conn.getresponse()


def sse_events(resp, slow: bool = False):
    """(event name, data) pairs; `slow` reads a few bytes at a time with pauses."""
    buf = b""
    event = None
    while True:
        if slow:
            chunk = resp.read1(64)
            time.sleep(0.02)
        else:
            chunk = resp.read1(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if not line:
                event = None
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                yield event, line[5:].strip().decode(errors="replace")


def anthropic_body(rng: random.Random, stream: bool, tools: bool) -> dict:
    body = {
        "model": MODEL,
        "max_tokens": rng.randint(4, 32),
        "system": system_prompt(rng.randint(0, 3)),
        "messages": [{"role": "user", "content": user_turn(rng)}],
        "stream": stream,
    }
    if rng.random() < 0.5:
        body["temperature"] = 0
    if tools:
        body["tools"] = TOOLS_ANTHROPIC
    return body


def openai_body(rng: random.Random, stream: bool, tools: bool) -> dict:
    body = {
        "model": MODEL,
        "max_tokens": rng.randint(4, 32),
        "messages": [
            {"role": "system", "content": system_prompt(rng.randint(0, 3))},
            {"role": "user", "content": user_turn(rng)},
        ],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = TOOLS_OPENAI
    return body


def check_message(d: dict) -> str | None:
    if d.get("type") != "message" or not isinstance(d.get("content"), list):
        return "not a message"
    if d.get("stop_reason") not in ("end_turn", "max_tokens", "stop_sequence", "tool_use"):
        return f"stop_reason {d.get('stop_reason')!r}"
    if not isinstance(d.get("usage", {}).get("output_tokens"), int):
        return "no usage"
    return None


def check_chat(d: dict) -> str | None:
    if d.get("object") != "chat.completion" or not d.get("choices"):
        return "not a chat.completion"
    if d["choices"][0].get("finish_reason") not in ("stop", "length", "tool_calls"):
        return f"finish_reason {d['choices'][0].get('finish_reason')!r}"
    return None


def do_unary(c: Client, api: str, path: str, body: dict, check) -> tuple[str, int | None, str]:
    try:
        status, raw = c.post(path, body)
    except (OSError, http.client.HTTPException) as e:
        return LOST, None, repr(e)
    if status != 200:
        outcome, detail = classify_status(api, status, raw)
        return outcome, status, detail
    try:
        problem = check(json.loads(raw))
    except ValueError:
        problem = f"unparsable body {raw[:100]!r}"
    return (LOST, status, problem) if problem else (COMPLETE, status, "")


def do_stream(
    c: Client, api: str, path: str, body: dict, stop_after: int | None = None, slow: bool = False
) -> tuple[str, int | None, str]:
    try:
        conn, resp = c.open_stream(path, body, rcvbuf=4096 if slow else None)
    except (OSError, http.client.HTTPException) as e:
        return LOST, None, repr(e)
    try:
        if resp.status != 200:
            outcome, detail = classify_status(api, resp.status, resp.read())
            return outcome, resp.status, detail
        n = 0
        for event, data in sse_events(resp, slow=slow):
            n += 1
            if stop_after is not None and n >= stop_after:
                return CANCELLED, 200, ""
            if data == "[DONE]":
                return (COMPLETE, 200, "") if api == "openai" else (LOST, 200, "[DONE] in an Anthropic stream")
            try:
                d = json.loads(data)
            except ValueError:
                return LOST, 200, f"unparsable SSE data {data[:100]!r}"
            if api == "anthropic":
                if event == "error" or d.get("type") == "error":
                    ok = isinstance(d.get("error", {}).get("type"), str)
                    return (ERROR, 200, "") if ok else (LOST, 200, f"bad error event {data[:200]}")
                if event == "message_stop":
                    return COMPLETE, 200, ""
            elif "error" in d:
                ok = isinstance(d["error"].get("message"), str)
                return (ERROR, 200, "") if ok else (LOST, 200, f"bad error chunk {data[:200]}")
        if stop_after is not None:
            return CANCELLED, 200, "ended before the cancel point"
        return LOST, 200, f"the stream ended after {n} events without its end"
    except (OSError, http.client.HTTPException) as e:
        return LOST, 200, repr(e)
    finally:
        conn.close()


def do_disconnect(c: Client, rng: random.Random, body: dict) -> tuple[str, int | None, str]:
    """A non-streaming request abandoned at a random moment."""
    try:
        status, raw = c.post("/v1/messages", body, timeout=rng.uniform(0.05, 3.0))
    except TimeoutError:
        return CANCELLED, None, ""
    except (OSError, http.client.HTTPException) as e:
        return LOST, None, repr(e)
    if status == 200:
        return COMPLETE, status, ""
    outcome, detail = classify_status("anthropic", status, raw)
    return outcome, status, detail


def do_raw(c: Client, head: bytes, payload: bytes, want: int) -> tuple[str, int | None, str]:
    """Send a hand-made request; the answer must be `want` with a well-formed error."""
    try:
        with socket.create_connection(("127.0.0.1", c.port), timeout=30) as s:
            s.sendall(head)
            try:
                s.sendall(payload)
            except OSError:
                pass  # the server may answer and close before taking it all
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head_s, _, rest = data.partition(b"\r\n\r\n")
                    m = re.search(rb"content-length:\s*(\d+)", head_s, re.I)
                    if m and len(rest) >= int(m.group(1)):
                        break
    except OSError as e:
        return LOST, None, repr(e)
    m = re.match(rb"HTTP/1\.1 (\d{3})", data)
    if not m:
        return LOST, None, f"no status line: {data[:100]!r}"
    status = int(m.group(1))
    body = data.partition(b"\r\n\r\n")[2]
    outcome, detail = classify_status("anthropic", status, body)
    if outcome == ERROR and status != want:
        return LOST, status, f"wanted {want}"
    return outcome, status, detail


def request_head(length: int) -> bytes:
    return (
        f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\nconnection: close\r\n\r\n"
    ).encode()


ACTIONS = {
    # name: weight
    "anthropic": 12,
    "anthropic_stream": 12,
    "anthropic_tools": 8,
    "openai_chat": 8,
    "openai_chat_stream": 8,
    "openai_tools": 6,
    "completions": 5,
    "count_tokens": 8,
    "cancel_stream": 8,
    "disconnect": 6,
    "slow_reader": 4,
    "oversize": 2,
    "malformed": 3,
}


def run_action(c: Client, rng: random.Random, action: str) -> tuple[str, int | None, str]:
    if action == "anthropic":
        return do_unary(c, "anthropic", "/v1/messages", anthropic_body(rng, False, False), check_message)
    if action == "anthropic_stream":
        return do_stream(c, "anthropic", "/v1/messages", anthropic_body(rng, True, False))
    if action == "anthropic_tools":
        stream = rng.random() < 0.5
        body = anthropic_body(rng, stream, True)
        if stream:
            return do_stream(c, "anthropic", "/v1/messages", body)
        return do_unary(c, "anthropic", "/v1/messages", body, check_message)
    if action == "openai_chat":
        return do_unary(c, "openai", "/v1/chat/completions", openai_body(rng, False, False), check_chat)
    if action == "openai_chat_stream":
        return do_stream(c, "openai", "/v1/chat/completions", openai_body(rng, True, False))
    if action == "openai_tools":
        stream = rng.random() < 0.5
        body = openai_body(rng, stream, True)
        if stream:
            return do_stream(c, "openai", "/v1/chat/completions", body)
        return do_unary(c, "openai", "/v1/chat/completions", body, check_chat)
    if action == "completions":
        body = {"model": MODEL, "prompt": user_turn(rng), "max_tokens": rng.randint(4, 24)}
        return do_unary(
            c, "openai", "/v1/completions", body, lambda d: None if d.get("object") == "text_completion" else "shape"
        )
    if action == "count_tokens":
        body = anthropic_body(rng, False, rng.random() < 0.5)
        del body["max_tokens"], body["stream"]
        return do_unary(
            c,
            "anthropic",
            "/v1/messages/count_tokens",
            body,
            lambda d: None if isinstance(d.get("input_tokens"), int) else "no input_tokens",
        )
    if action == "cancel_stream":
        api = rng.choice(["anthropic", "openai"])
        path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
        body = anthropic_body(rng, True, False) if api == "anthropic" else openai_body(rng, True, False)
        body["max_tokens"] = 64
        return do_stream(c, api, path, body, stop_after=rng.randint(1, 8))
    if action == "disconnect":
        return do_disconnect(c, rng, anthropic_body(rng, False, False))
    if action == "slow_reader":
        return do_stream(c, "anthropic", "/v1/messages", anthropic_body(rng, True, False), slow=True)
    if action == "oversize":
        return do_raw(c, request_head(2 * 1024**3), b"{" + b" " * 65535, want=413)
    if action == "malformed":
        junk = rng.choice([b'{"model": ', b"[1, 2", b'{"messages": [}', b"\xff\xfe{}"])
        return do_raw(c, request_head(len(junk)), junk, want=400)
    raise ValueError(action)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def gauge(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B)?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s}")
    unit = (m.group(2) or "B").upper().replace("I", "")
    return int(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the pensieve binary")
    ap.add_argument("--model", required=True, help="a GGUF file")
    ap.add_argument("--duration", type=float, default=3600, help="seconds of traffic [3600]")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before RSS is compared [10%%, min 30]")
    ap.add_argument("--clients", type=int, default=12, help="client threads [12]")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--queue", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-ram", default="64MiB")
    ap.add_argument("--cache-disk", default="512MiB")
    ap.add_argument("--max-rss-growth", type=float, default=0.05, help="fraction [0.05]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else max(30.0, args.duration * 0.1)

    work = Path(tempfile.mkdtemp(prefix="pensieve-soak-"))
    port = free_port()
    cmd = [
        args.bin,
        "serve",
        "--model",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--parallel",
        str(args.parallel),
        "--queue",
        str(args.queue),
        "--ctx",
        str(args.ctx),
        "--cache-ram",
        args.cache_ram,
        "--cache-dir",
        str(work / "kv"),
        "--cache-disk",
        args.cache_disk,
    ]
    env = {**os.environ, "RUST_LOG": "info"}
    server = Server("pensieve", cmd, port, work / "server.log", env=env)
    server.start(health_timeout=120)
    pid = server.pid
    tally = Tally()
    client = Client(port, timeout=300)
    t_start = time.monotonic()
    deadline = t_start + args.duration
    rss: list[tuple[float, int, float]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        # RSS with and without the RAM tier of the prefix cache: that tier fills up to
        # --cache-ram by design, which is growth but no leak.
        while not stop_sampling.is_set():
            kib = kib_field(read_proc_status(pid), "VmRSS")
            try:
                host = scrape(port).get('pensieve_cache_bytes{tier="host"}', 0.0)
            except (OSError, http.client.HTTPException):
                host = 0.0
            if kib:
                rss.append((time.monotonic() - t_start, kib, kib - host / 1024))
            stop_sampling.wait(2.0)

    def worker(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)
        names, weights = list(ACTIONS), list(ACTIONS.values())
        while time.monotonic() < deadline:
            action = rng.choices(names, weights)[0]
            t0 = time.monotonic()
            outcome, status, detail = run_action(client, rng, action)
            tally.add(action, outcome, status, detail, time.monotonic() - t0)
            if status in ALLOWED_5XX:
                # Overloaded: back off as the SDKs do, rather than spin on 529s.
                time.sleep(rng.uniform(0.5, 2.0))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    last_report = time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if server.proc.poll() is not None:
            log(f"the server died: {server.log_tail()}")
            break
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            rss_now = f"{rss[-1][1] / 1024:.0f} MiB" if rss else "-"
            log(
                f"{time.monotonic() - t_start:.0f} s: complete {tally.total(COMPLETE)}, error {tally.total(ERROR)}, "
                f"cancelled {tally.total(CANCELLED)}, lost {tally.total(LOST)}, 5xx {tally.total(BAD_5XX)}, "
                f"RSS {rss_now}"
            )
    for t in threads:
        t.join(timeout=330)
    traffic_s = time.monotonic() - t_start
    stop_sampling.set()
    alive = server.proc.poll() is None

    # Idle: nothing running or queued, cache tiers within budget, and still serving.
    idle = {}
    if alive:
        for _ in range(120):
            m = scrape(port)
            if gauge(m, "pensieve_running_sequences") == 0 and gauge(m, "pensieve_queue_depth") == 0:
                break
            time.sleep(0.5)
        idle = {
            "running_sequences": gauge(m, "pensieve_running_sequences"),
            "queue_depth": gauge(m, "pensieve_queue_depth"),
            **{
                f"cache_bytes_{t}": m.get(f'pensieve_cache_bytes{{tier="{t}"}}', 0.0)
                for t in ("context", "host", "disk")
            },
        }
        time.sleep(3)
        again = scrape(port)
        idle["stable"] = all(
            again.get(k, 0.0) == m.get(k, 0.0)
            for k in m
            if k.startswith(("pensieve_cache_bytes", "pensieve_running", "pensieve_queue"))
        )
        idle["rss_mib"] = (kib_field(read_proc_status(pid), "VmRSS") or 0) / 1024
        last = run_action(client, random.Random(0), "anthropic")
        idle["last_request"] = last[0]

    queued_ms = [int(x) for x in re.findall(r"queued_ms=(\d+)", server.log_text())]
    server.stop()

    def growth_of(series: list[float]) -> tuple[float, float, float]:
        """Median of the first and last tenth after warm-up, and the growth between."""
        window = max(1, len(series) // 10)
        start = statistics.median(series[:window]) if series else 0.0
        end = statistics.median(series[-window:]) if series else 0.0
        return start, end, (end / start - 1) if start else float("nan")

    rss_start, rss_end, raw_growth = growth_of([kib for t, kib, _ in rss if t >= warmup])
    net_start, net_end, growth = growth_of([net for t, _, net in rss if t >= warmup])
    service_p99 = percentile(tally.durations, 99) or 0.0
    queue_bound_ms = (args.queue / args.parallel + 1) * service_p99 * 1000
    queued_p99 = percentile([float(q) for q in queued_ms], 99) or 0.0

    figures = {
        "duration_s": round(traffic_s),
        "clients": args.clients,
        "parallel": args.parallel,
        "queue": args.queue,
        "requests": sum(tally.counts.values()),
        "outcomes": {o: tally.total(o) for o in (COMPLETE, ERROR, CANCELLED, LOST, BAD_5XX)},
        "by_action": {f"{a}/{o}": n for (a, o), n in sorted(tally.counts.items())},
        "statuses": dict(sorted(tally.statuses.items())),
        "rss_mib": {"after_warmup": round(rss_start / 1024, 1), "end": round(rss_end / 1024, 1)},
        "rss_growth": round(raw_growth, 4),
        "rss_less_ram_tier_mib": {"after_warmup": round(net_start / 1024, 1), "end": round(net_end / 1024, 1)},
        "rss_less_ram_tier_growth": round(growth, 4),
        "queued_ms": {"p50": percentile([float(q) for q in queued_ms], 50), "p99": queued_p99, "n": len(queued_ms)},
        "queue_bound_ms": round(queue_bound_ms),
        "service_p99_s": round(service_p99, 2),
        "idle": idle,
        "lost_examples": tally.lost[:20],
    }
    budget = {"host": parse_size(args.cache_ram), "disk": parse_size(args.cache_disk)}
    misses = []
    if not alive:
        misses.append("the server died")
    if figures["outcomes"][LOST]:
        misses.append(f"{figures['outcomes'][LOST]} lost responses")
    if figures["outcomes"][BAD_5XX]:
        misses.append(f"{figures['outcomes'][BAD_5XX]} 5xx other than 529/503")
    if not growth < args.max_rss_growth:
        misses.append(f"RSS less the RAM tier grew {growth:.1%} after warm-up (limit {args.max_rss_growth:.0%})")
    if alive and (idle["running_sequences"] or idle["queue_depth"] or not idle["stable"]):
        misses.append(f"not idle after the traffic: {idle}")
    if alive and any(idle[f"cache_bytes_{t}"] > b for t, b in budget.items()):
        misses.append(f"a cache tier over its budget: {idle}")
    if alive and idle["last_request"] != COMPLETE:
        misses.append(f"the last request after the soak: {idle['last_request']}")
    if queued_p99 > queue_bound_ms:
        misses.append(f"p99 queueing {queued_p99:.0f} ms over the bound {queue_bound_ms:.0f} ms")
    figures["misses"] = misses

    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    o = figures["outcomes"]
    print(
        f"soak: {figures['requests']} requests in {traffic_s:.0f} s, {o[COMPLETE]} complete, {o[ERROR]} errors "
        f"({figures['statuses'].get(529, 0)} x 529), {o[CANCELLED]} cancelled, {o[LOST]} lost, {o[BAD_5XX]} bad 5xx; "
        f"RSS {raw_growth:+.1%} after warm-up ({growth:+.1%} less the RAM tier); p99 queueing {queued_p99:.0f} ms (bound {queue_bound_ms:.0f} ms)"
    )
    if misses:
        print("soak: MISSED " + "; ".join(misses) + f" (server log: {server.log_path})")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
