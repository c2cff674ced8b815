#!/usr/bin/env python3
"""Greedy output on the GPU against the CPU: the same `pensieve` binary, the same prompts, once with
every layer on the GPU and once with --gpu-layers 0. Prints, per model and prompt, whether the
texts agree, and where they part when they do not (numerics: CUDA kernels sum in another order
than the CPU's, so near-ties can flip a token, after which the texts differ).

usage: greedy.py PENSIEVE_BIN MODEL.gguf [MODEL.gguf ...]     (stdlib only)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Here is a list of five fruits:\n1.",
    "Once upon a time, in a small village by the sea,",
    '{"name": "pensieve", "version":',
    "Q: What is 17 times 23?\nA:",
]
MAX_TOKENS = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete(port: int, prompt: str) -> str:
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        body,
        {"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["choices"][0]["text"]


def outputs(binary: str, model: str, gpu_layers: str) -> list[str]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="greedy-", suffix=".log", delete=False)  # noqa: SIM115 (kept for reading)
    cmd = [
        binary,
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--parallel",
        "1",
        "--ctx",
        "2048",
        "--gpu-layers",
        gpu_layers,
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd} exited; log {log.name}") from None
                time.sleep(0.5)
        return [complete(port, p) for p in PROMPTS]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    binary, models = sys.argv[1], sys.argv[2:]
    agree_all = True
    for model in models:
        gpu = outputs(binary, model, "999")
        cpu = outputs(binary, model, "0")
        same = 0
        for prompt, g, c in zip(PROMPTS, gpu, cpu, strict=True):
            if g == c:
                same += 1
                print(f"same   {model.rsplit('/', 1)[-1]} {prompt[:30]!r}: {g[:60]!r}")
                continue
            at = next(
                (i for i, (a, b) in enumerate(zip(g, c, strict=False)) if a != b),
                min(len(g), len(c)),
            )
            print(
                f"differ {model.rsplit('/', 1)[-1]} {prompt[:30]!r} from char {at}: gpu {g[at : at + 40]!r} "
                f"cpu {c[at : at + 40]!r} (common {g[:at][-40:]!r})"
            )
        agree_all &= same == len(PROMPTS)
        print(f"{model.rsplit('/', 1)[-1]}: {same}/{len(PROMPTS)} prompts give the same greedy text on GPU and CPU")
    return 0 if agree_all else 1


if __name__ == "__main__":
    sys.exit(main())
