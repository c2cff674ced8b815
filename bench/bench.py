#!/usr/bin/env python3
"""Pensieve vs llama-server: single-stream decode and cold prefill over the Anthropic Messages API.

Stdlib only (Python 3.11). Both servers are started by this script, one at a time, on loopback
ports, with the same GGUF file and the same thread count, alternating A B A B for --rounds rounds.
Every measurement is a streaming `POST /v1/messages` as a user sees it:

  decode tok/s   = (output_tokens - 1) / (time of last content delta - time of first content delta)
                   short prompt that makes the model write a long answer, temperature 0
  TTFT           = request sent -> first content delta
  prefill tok/s  = prompt tokens / TTFT, on a ~2,000-token prompt that starts with a random nonce
                   (defeats prompt caches); prompt tokens from the stream's usage
  decode@long    = decode tok/s of the tokens that follow the long prompt (decode at ~2k context)
  peak RSS       = VmHWM of the server process (/proc/PID/status), read before it is stopped

It also states the physical bound on decode: memory bandwidth (large in-memory copy/scan) divided
by the model file's size. See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA = "llama-server"
PENSIEVE = "pensieve"
SIDES = (LLAMA, PENSIEVE)

DEFAULT_MODEL_CANDIDATES = [
    "/root/.cache/pensieve/test-models/SmolLM2-135M-Instruct.Q4_1.gguf",
]
DEFAULT_LLAMA_BIN = "/root/.cache/pensieve/peers/bin/llama-server"

DECODE_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a hidden cave under the "
    "rocks. Describe every room of the lighthouse, the weather, the sea, the cave and what he "
    "finds there, step by step, in many paragraphs."
)

# Word list for the synthetic prefill text: ordinary English words, so the tokenizer sees
# ordinary text (about 1.2-1.4 tokens a word with a BPE vocabulary).
_WORDS = (
    "the a of and to in is was that for on with as by at from it this be are were which or "
    "an have has had not but they their his her its one all would there been if more when "
    "will who so no into time year people way day man thing woman life child world school "
    "state family student group country problem hand part place case week company system "
    "program question work government number night point home water room mother area money "
    "story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office "
    "door health person art war history party result change morning reason research girl guy "
    "moment air teacher force education river mountain light ship harbor storm island bridge "
    "garden window market letter music paper road village winter summer forest field valley "
    "small large old new good great long little own other right big high different early "
    "young important few public bad same able quiet bright dark cold warm slow quick green"
).split()


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def kib_field(status: dict[str, str], key: str) -> int | None:
    v = status.get(key)
    if not v:
        return None
    try:
        return int(v.split()[0])
    except ValueError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)   # idle + iowait
    total = sum(parts[:8])                                    # guest time is already in user
    return total - idle, total


def proc_jiffies(pid: int) -> int:
    """utime + stime of one process (all its threads), in jiffies."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy(interval: float = 1.0) -> float:
    """Fraction of all cores busy over `interval` seconds (0..1)."""
    b0, t0 = cpu_jiffies()
    time.sleep(interval)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_idle(max_wait: float, threshold: float) -> float:
    """Wait (up to max_wait s) until the machine is below `threshold` busy; returns the last
    sample. Other work on a 2-core machine wrecks a 2-thread server's timings (its threads
    spin-wait on each other), so measuring while another build runs is mostly noise."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    warned = False
    while busy > threshold and time.monotonic() < deadline:
        if not warned:
            log(f"machine {100 * busy:.0f}% busy before start; waiting up to {max_wait:.0f} s "
                f"for < {100 * threshold:.0f}%")
            warned = True
        time.sleep(4)
        busy = machine_busy()
    if busy > threshold:
        log(f"warning: machine still {100 * busy:.0f}% busy; measuring anyway (see 'other CPU')")
    return busy


def synthetic_text(n_words: int, seed: int = 1234) -> str:
    """Deterministic pseudo-English text: the same body for both servers and every round."""
    rng = random.Random(seed)
    sentences = []
    count = 0
    while count < n_words:
        k = rng.randint(8, 18)
        words = [rng.choice(_WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
        count += k
    paras = []
    for i in range(0, len(sentences), 6):
        paras.append(" ".join(sentences[i:i + 6]))
    return "\n\n".join(paras)


def nonce() -> str:
    return "%016x" % random.SystemRandom().getrandbits(64)


def summarize(values: list[float]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "spread": (max(vals) - min(vals)) / med if med else None,
    }


# --------------------------------------------------------------------------------------------
# memory bandwidth (the decode bound)
# --------------------------------------------------------------------------------------------

def measure_bandwidth(mib: int = 512, reps: int = 3) -> dict:
    """Copy and scan a large buffer; best of `reps`. Pure Python, but both operations are one
    C call (memcpy / memchr) over the whole buffer, so they run at memory speed."""
    n = mib * 1024 * 1024
    # bytearray(n) would be calloc'd: untouched pages all map the kernel's zero page and a scan
    # of them runs from cache. Repeating a 1-byte bytearray is a memset, which touches every page.
    src = bytearray(b"\x00") * n
    dst = bytearray(b"\x02") * n
    copy_best = 0.0
    read_best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        dst[:] = src            # memcpy/memmove of n bytes: reads n, writes n
        t1 = time.perf_counter()
        copy_best = max(copy_best, n / (t1 - t0))
        t0 = time.perf_counter()
        idx = src.find(b"\x01")  # memchr over n bytes: reads n
        t1 = time.perf_counter()
        assert idx == -1
        read_best = max(read_best, n / (t1 - t0))
    del src, dst
    return {
        "buffer_mib": mib,
        "copy_bytes_per_s": copy_best,     # bytes copied per second (traffic is 2x this)
        "read_bytes_per_s": read_best,     # bytes scanned per second
    }


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------

class Server:
    def __init__(self, side: str, cmd: list[str], port: int, log_path: Path, env: dict | None = None):
        self.side = side
        self.cmd = cmd
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, health_timeout: float) -> None:
        log(f"start {self.side}: {' '.join(self.cmd)}")
        self._logf = open(self.log_path, "ab")
        self._logf.write(f"\n===== {time.ctime()} {' '.join(self.cmd)}\n".encode())
        self._logf.flush()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,   # own process group: we can kill all it spawned
        )
        _LIVE.add(self)
        deadline = t0 + health_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.side} exited with code {self.proc.returncode} before becoming healthy;"
                    f" last log lines:\n{self.log_tail()}")
            if self._healthy():
                self.startup_s = time.perf_counter() - t0
                log(f"{self.side} healthy after {self.startup_s:.2f} s (pid {self.proc.pid})")
                return
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.side} not healthy after {health_timeout} s;"
                                   f" last log lines:\n{self.log_tail()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            c.close()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False

    def peak_rss_kib(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return kib_field(read_proc_status(self.proc.pid), "VmHWM")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        else:
            # leader gone; make sure nothing it spawned is left
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc = None
        _LIVE.discard(self)
        try:
            self._logf.close()
        except Exception:
            pass

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"


_LIVE: set[Server] = set()


def _kill_all() -> None:
    for s in list(_LIVE):
        try:
            s.stop()
        except Exception:
            pass


atexit.register(_kill_all)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


# --------------------------------------------------------------------------------------------
# streaming client
# --------------------------------------------------------------------------------------------

class StreamError(RuntimeError):
    pass


def stream_message(port: int, body: dict, timeout: float) -> dict:
    """POST /v1/messages with stream=true; returns timings (perf_counter seconds) and usage.

    Content deltas are text_delta and thinking_delta (a model's visible tokens either way);
    input_json_delta (tool arguments) counts too."""
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "anthropic-version": "2023-06-01",
        "x-api-key": "bench",
    }
    t_sent = time.perf_counter()
    conn.request("POST", "/v1/messages", body=payload, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        txt = resp.read().decode(errors="replace")
        conn.close()
        raise StreamError(f"HTTP {resp.status}: {txt[:500]}")

    delta_times: list[float] = []
    text_parts: list[str] = []
    usage: dict[str, int] = {}
    events: dict[str, int] = {}
    stop_reason = None
    t_message_start = None
    t_end = None
    notes: list[str] = []

    def take_usage(u: dict | None) -> None:
        if not isinstance(u, dict):
            return
        for k, v in u.items():
            if isinstance(v, int):
                usage[k] = max(usage.get(k, 0), v) if k in usage else v

    data_lines: list[str] = []
    event_name = None
    done = False
    while not done:
        raw = resp.readline()
        now = time.perf_counter()
        if not raw:
            break
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event_name = line[6:].strip()
            continue
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip(" "))
            continue
        if line != "":
            continue
        # blank line: dispatch
        if not data_lines:
            event_name = None
            continue
        data_s = "\n".join(data_lines)
        data_lines = []
        if data_s.strip() == "[DONE]":
            break
        try:
            data = json.loads(data_s)
        except json.JSONDecodeError:
            notes.append(f"unparsable SSE data: {data_s[:80]!r}")
            event_name = None
            continue
        typ = data.get("type") or event_name or "?"
        event_name = None
        events[typ] = events.get(typ, 0) + 1
        if typ == "message_start":
            t_message_start = now
            take_usage((data.get("message") or {}).get("usage"))
        elif typ == "content_block_delta":
            d = data.get("delta") or {}
            dt = d.get("type")
            piece = d.get("text") if dt == "text_delta" else d.get("thinking") if dt == "thinking_delta" \
                else d.get("partial_json") if dt == "input_json_delta" else None
            if piece:  # signature_delta and empty pieces are not tokens
                delta_times.append(now)
                text_parts.append(piece)
        elif typ == "message_delta":
            take_usage(data.get("usage"))
            stop_reason = (data.get("delta") or {}).get("stop_reason", stop_reason)
        elif typ == "message_stop":
            t_end = now
            done = True
        elif typ == "error":
            conn.close()
            raise StreamError(f"error event: {data_s[:500]}")
    if t_end is None:
        t_end = time.perf_counter()
        notes.append("stream ended without message_stop")
    conn.close()

    text = "".join(text_parts)
    out_tokens = usage.get("output_tokens")
    if not out_tokens:
        out_tokens = len(delta_times)
        notes.append("no output_tokens in usage: counted content deltas instead")
    # prompt tokens: Anthropic splits them into uncached input_tokens + cache reads/creation
    prompt_tokens = None
    if "input_tokens" in usage:
        prompt_tokens = (usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
                         + usage.get("cache_creation_input_tokens", 0))
    else:
        notes.append("no input_tokens in usage")
    return {
        "t_sent": t_sent,
        "t_message_start": t_message_start,
        "t_first_delta": delta_times[0] if delta_times else None,
        "t_last_delta": delta_times[-1] if delta_times else None,
        "t_end": t_end,
        "n_deltas": len(delta_times),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": usage.get("cache_read_input_tokens", 0),
        "usage": usage,
        "events": events,
        "stop_reason": stop_reason,
        "text_chars": len(text),
        "text_head": text[:120],
        "notes": notes,
    }


def decode_rate(r: dict) -> float | None:
    n = r["output_tokens"]
    if not n or n < 2 or r["t_first_delta"] is None or r["t_last_delta"] is None:
        return None
    span = r["t_last_delta"] - r["t_first_delta"]
    if span <= 0:
        return None
    return (n - 1) / span


def ttft(r: dict) -> float | None:
    if r["t_first_delta"] is not None:
        return r["t_first_delta"] - r["t_sent"]
    return None


# --------------------------------------------------------------------------------------------
# one round on one server
# --------------------------------------------------------------------------------------------

def make_body(model_name: str, system: str, user: str, max_tokens: int) -> dict:
    return {
        "model": model_name,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "system": system,
        "messages": [{"role": "user", "content": user}],
    }


def run_round(srv: Server, args, model_name: str, prefill_body_text: str) -> dict:
    res: dict = {"side": srv.side, "startup_s": srv.startup_s}
    # warm-up: faults the weights in and lets the server set up its threads; not measured
    stream_message(srv.port, make_body(model_name, "You are a helpful assistant.",
                                       "Say hello.", 8), args.request_timeout)
    # CPU used by anything but the server and this script while measuring: the noise gauge
    busy0, total0 = cpu_jiffies()
    srv0, self0 = proc_jiffies(srv.proc.pid), proc_jiffies(os.getpid())

    dec_rates = []
    dec_runs = []
    for _ in range(args.decode_reps):
        r = stream_message(srv.port, make_body(model_name, "You are a helpful assistant.",
                                               DECODE_PROMPT, args.decode_tokens),
                           args.request_timeout)
        rate = decode_rate(r)
        dec_rates.append(rate)
        dec_runs.append(r)
        if r["output_tokens"] < args.decode_tokens * 0.5:
            log(f"warning: {srv.side} decode run stopped after {r['output_tokens']} tokens "
                f"(stop_reason={r['stop_reason']})")
    res["decode_tok_s"] = statistics.median([x for x in dec_rates if x]) if any(dec_rates) else None
    res["decode_output_tokens"] = dec_runs[-1]["output_tokens"]
    res["decode_runs"] = dec_runs

    pre_runs = []
    for _ in range(args.prefill_reps):
        n = nonce()
        # the nonce opens the system prompt (right after the chat template's first tokens) and
        # the user text, so no prefix of this prompt was seen before
        system = f"[session {n}] You are a careful reader."
        user = (f"{n}\n\n{prefill_body_text}\n\nSummarize the text above in a few sentences.")
        r = stream_message(srv.port, make_body(model_name, system, user, args.prefill_max_tokens),
                           args.request_timeout)
        pre_runs.append(r)
    r = pre_runs[-1]
    t = [ttft(x) for x in pre_runs]
    rates = []
    for x, tt in zip(pre_runs, t):
        if tt and x["prompt_tokens"]:
            rates.append(x["prompt_tokens"] / tt)
        if x["cached_tokens"] and x["prompt_tokens"] and x["cached_tokens"] > 0.02 * x["prompt_tokens"]:
            log(f"warning: {srv.side} served {x['cached_tokens']}/{x['prompt_tokens']} prompt "
                f"tokens from cache on a 'cold' prompt")
    res["ttft_s"] = statistics.median([x for x in t if x]) if any(t) else None
    res["prefill_tok_s"] = statistics.median(rates) if rates else None
    res["prefill_prompt_tokens"] = r["prompt_tokens"]
    res["prefill_cached_tokens"] = r["cached_tokens"]
    long_rates = [decode_rate(x) for x in pre_runs]
    long_rates = [x for x in long_rates if x]
    res["decode_long_tok_s"] = statistics.median(long_rates) if long_rates else None
    res["decode_long_output_tokens"] = r["output_tokens"]
    res["prefill_runs"] = pre_runs

    res["peak_rss_kib"] = srv.peak_rss_kib()
    busy1, total1 = cpu_jiffies()
    srv1, self1 = proc_jiffies(srv.proc.pid), proc_jiffies(os.getpid())
    if total1 > total0:
        foreign = (busy1 - busy0) - (srv1 - srv0) - (self1 - self0)
        res["other_cpu_pct"] = max(0.0, 100.0 * foreign / (total1 - total0))
        res["server_cpu_pct"] = 100.0 * (srv1 - srv0) / (total1 - total0)
    return res


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

METRICS = [
    # key, label, format, higher_is_better
    ("decode_tok_s", "decode tok/s (short ctx)", "{:.1f}", True),
    ("prefill_tok_s", "cold prefill tok/s", "{:.1f}", True),
    ("ttft_s", "TTFT, cold prompt (s)", "{:.2f}", False),
    ("decode_long_tok_s", "decode tok/s after prompt", "{:.1f}", True),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}", False),
    ("startup_s", "start -> /health 200 (s)", "{:.2f}", False),
    ("other_cpu_pct", "other CPU while measuring %", "{:.0f}", False),
]


def fmt_stat(s: dict | None, f: str) -> str:
    if not s:
        return "-"
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


def print_table(summary: dict, sides: list[str]) -> None:
    w0 = 28
    header = f"{'metric':<{w0}}" + "".join(f"{s + ' median [min-max]':>32}" for s in sides)
    if len(sides) == 2:
        header += f"{'pensieve/llama':>16}"
    print(header)
    print("-" * len(header))
    for key, label, f, _ in METRICS:
        row = f"{label:<{w0}}"
        for s in sides:
            row += f"{fmt_stat(summary[s].get(key), f):>32}"
        if len(sides) == 2:
            a = summary[LLAMA].get(key)
            b = summary[PENSIEVE].get(key)
            ratio = (b["median"] / a["median"]
                     if a and b and a["median"] and key != "other_cpu_pct" else None)
            row += f"{(f'{ratio:.2f}x' if ratio else '-'):>16}"
        print(row)
    wide = [(s, label) for s in sides for key, label, _, _ in METRICS[:4]
            if summary[s].get(key) and summary[s][key]["spread"] and summary[s][key]["spread"] > 0.15]
    for s, label in wide:
        print(f"note: {s} '{label}' spread > 15% of median: noisy machine, consider a rerun")
    for s in sides:
        o = summary[s].get("other_cpu_pct")
        if o and o["max"] > 10:
            print(f"note: other processes used up to {o['max']:.0f}% of the machine while {s} was "
                  f"measured: its numbers are not trustworthy, rerun on a quiet machine")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", "/root/.cache/pensieve-target")
    ap.add_argument("--model", help="GGUF file (default: the cached SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--pensieve-bin", default=os.path.join(target, "release", "pensieve"))
    ap.add_argument("--llama-server-bin", default=os.environ.get("LLAMA_SERVER_BIN", DEFAULT_LLAMA_BIN))
    ap.add_argument("--only", choices=SIDES, help="benchmark one side only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--decode-tokens", type=int, default=256, help="max_tokens of the decode request")
    ap.add_argument("--decode-reps", type=int, default=1, help="decode requests per round")
    ap.add_argument("--prefill-words", type=int, default=1740,
                    help="words of synthetic text in the cold prompt (1740: ~2,000 tokens with SmolLM2)")
    ap.add_argument("--prefill-max-tokens", type=int, default=32,
                    help="max_tokens of the cold-prompt request (its decode is 'decode after prompt')")
    ap.add_argument("--prefill-reps", type=int, default=1, help="cold-prompt requests per round")
    ap.add_argument("--health-timeout", type=float, default=180)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--wait-idle", type=float, default=120, metavar="S",
                    help="before each server start, wait up to S s for the machine to be idle (0: don't)")
    ap.add_argument("--idle-threshold", type=float, default=15, metavar="PCT",
                    help="'idle' means below PCT%% of all cores busy (default 15)")
    ap.add_argument("--max-other-cpu", type=float, default=15, metavar="PCT",
                    help="a round during which other processes used more than PCT%% of the machine "
                         "is noisy and is redone (default 15)")
    ap.add_argument("--retry-noisy", type=int, default=2, metavar="N",
                    help="redo a noisy round up to N times, then keep it (default 2)")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the memory bandwidth measurement")
    ap.add_argument("--llama-args", default="", help="extra arguments for llama-server (one string)")
    ap.add_argument("--pensieve-args", default="", help="extra arguments for pensieve serve (one string)")
    ap.add_argument("--log-dir", help="server logs (default: a new temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args()

    # Ctrl-C, kill and hang-up all end in the same cleanup (SIGINT set explicitly: a background
    # job of a non-interactive shell would otherwise inherit it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    model = args.model
    if not model:
        model = next((p for p in DEFAULT_MODEL_CANDIDATES if os.path.exists(p)), None)
        if not model:
            ap.error("no --model given and no cached test model found (scripts/fetch-test-models.sh)")
    model = os.path.abspath(model)
    if not os.path.isfile(model):
        ap.error(f"model not found: {model}")
    model_bytes = os.path.getsize(model)
    model_name = Path(model).stem

    sides = [args.only] if args.only else list(SIDES)
    bins = {LLAMA: args.llama_server_bin, PENSIEVE: args.pensieve_bin}
    for s in sides:
        if not (os.path.isfile(bins[s]) and os.access(bins[s], os.X_OK)):
            hint = "scripts/build-llama-server.sh" if s == LLAMA else "cargo build --release"
            ap.error(f"{s} binary not found: {bins[s]} (build it: {hint})")

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pensieve-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    def command(side: str, port: int) -> list[str]:
        if side == LLAMA:
            return [bins[LLAMA], "-m", model, "--host", "127.0.0.1", "--port", str(port),
                    "-np", "1", "-c", str(args.ctx), "-t", str(args.threads), "--no-webui",
                    *shlex.split(args.llama_args)]
        return [bins[PENSIEVE], "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
                "--ctx", str(args.ctx), "--threads", str(args.threads), *shlex.split(args.pensieve_args)]

    versions = {}
    for s in sides:
        try:
            p = subprocess.run([bins[s], "--version"], capture_output=True, text=True, timeout=30)
            out = (p.stdout + p.stderr).strip()
            versions[s] = out[:300] if p.returncode == 0 else f"? (--version exited {p.returncode})"
        except Exception as e:  # noqa: BLE001
            versions[s] = f"? ({e})"

    bw = None
    if not args.no_bandwidth:
        # measured before and after the runs (best of both): one of them may hit a busy moment
        log("measuring memory bandwidth (512 MiB copy and scan)")
        bw = measure_bandwidth()

    # the command line is the whole configuration: drop settings a server would read from the
    # environment (llama-server's LLAMA_ARG_*, pensieve's API key, which this client doesn't know)
    server_env = {k: v for k, v in os.environ.items()
                  if not k.startswith("LLAMA_ARG_") and k != "PENSIEVE_API_KEY"}
    prefill_text = synthetic_text(args.prefill_words)
    results: dict[str, list[dict]] = {s: [] for s in sides}
    discarded: list[dict] = []
    failures: list[dict] = []
    started = time.time()
    interrupted = False
    try:
        for rnd in range(args.rounds):
            for s in sides:
                for attempt in range(args.retry_noisy + 1):
                    busy_before = (wait_for_idle(args.wait_idle, args.idle_threshold / 100)
                                   if args.wait_idle > 0 else None)
                    port = free_port()
                    srv = Server(s, command(s, port), port, log_dir / f"{s}.log", env=server_env)
                    try:
                        srv.start(args.health_timeout)
                        r = run_round(srv, args, model_name, prefill_text)
                    except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
                        srv.stop()
                        failures.append({"side": s, "round": rnd + 1, "error": str(e)})
                        log(f"round {rnd + 1} {s} FAILED: {e}\n--- server log tail:\n{srv.log_tail()}")
                        if sum(1 for f in failures if f["side"] == s) >= 2:
                            raise RuntimeError(f"{s} failed twice; giving up") from e
                        break
                    finally:
                        srv.stop()
                    r["round"] = rnd + 1
                    r["attempt"] = attempt + 1
                    r["busy_before_pct"] = None if busy_before is None else 100 * busy_before
                    log(f"round {rnd + 1}/{args.rounds} {s}: decode {_f(r['decode_tok_s'])} tok/s "
                        f"({r['decode_output_tokens']} tok), prefill {_f(r['prefill_tok_s'])} tok/s "
                        f"({r['prefill_prompt_tokens']} tok, TTFT {_f(r['ttft_s'], 2)} s), "
                        f"decode after prompt {_f(r['decode_long_tok_s'])} tok/s, "
                        f"peak RSS {_f((r['peak_rss_kib'] or 0) / 1024, 0)} MiB, "
                        f"other CPU {_f(r.get('other_cpu_pct'), 0)}%")
                    noisy = (r.get("other_cpu_pct") or 0) > args.max_other_cpu
                    if noisy and attempt < args.retry_noisy:
                        log(f"other processes took {r['other_cpu_pct']:.0f}% of the machine "
                            f"(> {args.max_other_cpu:.0f}%): discarding this round of {s}, redoing it")
                        discarded.append(r)
                        continue
                    results[s].append(r)
                    break
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): servers stopped; summarizing what was measured")
    except RuntimeError as e:
        interrupted = True
        log(f"stopped: {e}; summarizing what was measured")
    finally:
        _kill_all()

    if bw and not interrupted:
        try:
            log("measuring memory bandwidth again")
            bw2 = measure_bandwidth()
            bw["copy_bytes_per_s"] = max(bw["copy_bytes_per_s"], bw2["copy_bytes_per_s"])
            bw["read_bytes_per_s"] = max(bw["read_bytes_per_s"], bw2["read_bytes_per_s"])
        except KeyboardInterrupt:
            pass

    summary: dict[str, dict] = {}
    for s in sides:
        rs = results[s]
        for r in rs:
            r["peak_rss_mib"] = r["peak_rss_kib"] / 1024 if r.get("peak_rss_kib") else None
        summary[s] = {key: summarize([r.get(key) for r in rs]) for key, *_ in METRICS}

    print()
    print(f"model: {model} ({model_bytes / 1e6:.1f} MB), threads {args.threads}, ctx {args.ctx}, "
          f"rounds {len(results[sides[0]])}{' (interrupted)' if interrupted else ''}"
          f"{f', {len(discarded)} noisy round(s) discarded and redone' if discarded else ''}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    for s in sides:
        print(f"{s}: {bins[s]}  ({'; '.join(versions[s].splitlines()) or '?'})")
    if any(results[s] for s in sides):
        r0 = next(results[s][0] for s in sides if results[s])
        print(f"cold prompt: {r0['prefill_prompt_tokens']} tokens; decode request: max_tokens "
              f"{args.decode_tokens}")
    print()
    if any(results[s] for s in sides):
        print_table(summary, sides)
    bound = None
    if bw:
        bound = {
            "copy": bw["copy_bytes_per_s"] / model_bytes,
            "read": bw["read_bytes_per_s"] / model_bytes,
        }
        print()
        print(f"memory bandwidth: copy {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s (bytes copied/s), "
              f"scan {bw['read_bytes_per_s'] / 1e9:.1f} GB/s (bytes read/s)")
        print(f"decode upper bound = bandwidth / model bytes: {bound['copy']:.0f} tok/s (copy), "
              f"{bound['read']:.0f} tok/s (scan) for {model_bytes / 1e6:.1f} MB")
        for s in sides:
            d = summary[s].get("decode_tok_s")
            if d:
                print(f"  {s} decode median = {100 * d['median'] / bound['read']:.0f}% of the scan bound")
    print(f"server logs: {log_dir}")

    if args.json:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "interrupted": interrupted,
            "model": model,
            "model_bytes": model_bytes,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "args": vars(args),
            "commands": {s: command(s, 0) for s in sides},
            "versions": versions,
            "bandwidth": bw,
            "decode_bound_tok_s": bound,
            "summary": summary,
            "ratios_pensieve_over_llama": (
                {k: (summary[PENSIEVE][k]["median"] / summary[LLAMA][k]["median"])
                 for k, *_ in METRICS if summary[PENSIEVE].get(k) and summary[LLAMA].get(k)
                 and summary[LLAMA][k]["median"] and k != "other_cpu_pct"}
                if len(sides) == 2 else None),
            "runs": results,
            "discarded_noisy_runs": discarded,
            "failures": failures,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"json: {args.json}")
    if failures:
        print(f"{len(failures)} round(s) failed: " + "; ".join(f"{f['side']} round {f['round']}: "
                                                          f"{f['error'][:200]}" for f in failures))
    return 130 if interrupted else (1 if failures else 0)


def _f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


if __name__ == "__main__":
    sys.exit(main())
