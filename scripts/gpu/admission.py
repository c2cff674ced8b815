#!/usr/bin/env python3
"""Memory-aware admission on a real GPU (issue 20): `pensieve serve` with a KV cache that cannot
fit the card must stop at start with the numbers, before llama.cpp allocates; one that fits must
load and answer. Each case runs the binary once and prints one JSON line: how it ended, how long
it took, the card's memory in use at its peak (nvidia-smi, polled), and the lines of its log
that say why. The last line says whether every case ended as expected.

usage: admission.py PENSIEVE_BIN MODEL.gguf        (stdlib only; nvidia-smi on PATH)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# name, flags, expected end: "refused" (exits non-zero, saying the KV does not fit the GPU) or
# "serves" (answers a completion). Qwen2.5-7B's shapes (F16 weights, 15.2 GB): 56 KiB of f16 KV
# a token, so 128 x 32k tokens are 240 GB (over any one card) and 16 x 32k are 30 GB; at q8_0
# the 128 are about 128 GB, over an H100's 80 and about what an H200 has left after the
# weights (either end is fine there, reported as it happened).
CASES = [
    ("128 x 32k f16", ["--parallel", "128", "--ctx", "32768"], "refused"),
    ("16 x 32k f16", ["--parallel", "16", "--ctx", "32768"], "serves"),
    (
        "128 x 32k q8_0",
        ["--parallel", "128", "--ctx", "32768", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0"],
        None,
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_used_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return int(out.split()[0]) if out.split() else -1


def answers(port: int) -> bool:
    body = json.dumps({"model": "m", "prompt": "def fib(n):", "max_tokens": 16, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return bool(json.loads(r.read())["choices"][0]["text"])


def run_case(binary: str, model: str, flags: list[str]) -> dict:
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="admission-", suffix=".log", delete=False) as log:
        path = log.name
    started = time.time()
    with open(path, "w") as out:
        proc = subprocess.Popen(
            [binary, "serve", "--model", model, "--port", str(port), *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    peak, ended, served = gpu_used_mib(), None, False
    deadline = started + 240
    while time.time() < deadline:
        peak = max(peak, gpu_used_mib())
        if proc.poll() is not None:
            ended = f"exit {proc.returncode}"
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                pass
        except OSError:
            time.sleep(0.5)
            continue
        served = answers(port)
        peak = max(peak, gpu_used_mib())
        ended = "served" if served else "answered nothing"
        break
    else:
        ended = "still loading after 240 s"
    took = round(time.time() - started, 1)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(path, errors="replace") as f:
        text = f.read()
    said = [
        line.strip()[:400]
        for line in text.splitlines()
        if any(k in line for k in ("does not fit", "may not fit", "error", "ERROR", "WARN", "out of memory", "context"))
    ]
    return {"ended": ended, "served": served, "seconds": took, "gpu_peak_mib": peak, "said": said[-6:]}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, model = sys.argv[1:]
    print(json.dumps({"gpu_idle_mib": gpu_used_mib()}), flush=True)
    ok = True
    for name, flags, expected in CASES:
        result = {"case": name, "expected": expected, **run_case(binary, model, flags)}
        refused = result["ended"].startswith("exit") and any("does not fit the GPU" in s for s in result["said"])
        if expected == "refused":
            result["as_expected"] = refused
        elif expected == "serves":
            result["as_expected"] = result["served"]
        else:
            result["as_expected"] = refused or result["served"]
        ok &= result["as_expected"]
        print(json.dumps(result), flush=True)
    print("admission: every case as expected" if ok else "admission: NOT as expected", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
