"""Memory of Pensieve against llama-server at the same --parallel and context per sequence.

    python3 bench/memory.py [--model PATH] [--parallel 4] [--ctx 32768] [--prompt-words 1500]

Each server in turn (alternating, --rounds times): started with `parallel` sequences of `ctx`
tokens (llama-server `-np N -c N*ctx`, one KV stream per slot; pensieve `--parallel N --ctx
ctx`, one pool of N*ctx cells), then `parallel` concurrent chat completions with distinct
prompts of about --prompt-words words (max_tokens 8), then the same prompts again (prefix-cache
hits). Reported per server: RSS after loading, peak RSS (VmHWM) and RSS at the end; for
pensieve also its prefix cache's RAM tier from /metrics (`pensieve_cache_bytes{tier="host"}`),
the memory that keeps earlier prompts after their sequence was reused.

Pensieve variants are `--pensieve LABEL=ARGS` (repeatable; default: its defaults, and
`--cache-ram 256MiB`), so that what the RAM tier costs shows apart from the rest.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (
    DEFAULT_LLAMA_BIN,
    DEFAULT_PENSIEVE_BIN,
    LLAMA,
    QWEN,
    Server,
    free_port,
    install_signal_handlers,
    kib_field,
    llama_command,
    log,
    nonce,
    pensieve_command,
    read_proc_status,
    scrape,
    synthetic_text,
)


def chat(port: int, prompt: str, timeout: float) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    finally:
        conn.close()


def wave(port: int, prompts: list[str], timeout: float) -> None:
    errors: list[BaseException] = []

    def run(p: str) -> None:
        try:
            chat(port, p, timeout)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(prompts)} requests failed: {errors[0]}")


def rss_mib(pid: int, field: str) -> float:
    return (kib_field(read_proc_status(pid), field) or 0) / 1024


def measure(label: str, cmd: list[str], port: int, prompts: list[str], args, log_dir: Path) -> dict:
    srv = Server(label, cmd, port, log_dir / f"{label.replace(' ', '_')}.log")
    srv.start(args.health_timeout)
    try:
        assert srv.pid is not None
        loaded = rss_mib(srv.pid, "VmRSS")
        t0 = time.perf_counter()
        wave(port, prompts, args.request_timeout)
        wave(port, prompts, args.request_timeout)
        took = time.perf_counter() - t0
        out = {
            "loaded": loaded,
            "peak": rss_mib(srv.pid, "VmHWM"),
            "end": rss_mib(srv.pid, "VmRSS"),
            "took_s": took,
        }
        if label != LLAMA:
            out["host_cache"] = scrape(port).get('pensieve_cache_bytes{tier="host"}', 0.0) / 2**20
        log(f"{label}: {out}")
        return out
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=QWEN)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=32768, help="context per sequence")
    ap.add_argument("--prompt-words", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-server-bin", default=DEFAULT_LLAMA_BIN)
    ap.add_argument("--pensieve-bin", default=DEFAULT_PENSIEVE_BIN)
    ap.add_argument(
        "--pensieve",
        action="append",
        metavar="LABEL=ARGS",
        help="a pensieve variant: its label and extra serve flags (repeatable)",
    )
    ap.add_argument("--health-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=1800)
    args = ap.parse_args()
    install_signal_handlers()
    variants = dict(
        v.split("=", 1) for v in (args.pensieve or ["pensieve=", "pensieve --cache-ram 256MiB=--cache-ram 256MiB"])
    )
    log_dir = Path(tempfile.mkdtemp(prefix="pensieve-memory-"))
    prompts = [f"[{nonce()}] " + synthetic_text(args.prompt_words, seed=i) for i in range(args.parallel)]
    results: dict[str, list[dict]] = {}
    sides = [LLAMA, *variants]
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else reversed(sides):
            port = free_port()
            if side == LLAMA:
                cmd = llama_command(args.llama_server_bin, args.model, port, args.threads, args.parallel, args.ctx, [])
            else:
                cmd = pensieve_command(
                    args.pensieve_bin,
                    args.model,
                    port,
                    args.threads,
                    args.ctx,
                    shlex.split(variants[side]),
                    parallel=args.parallel,
                )
            results.setdefault(side, []).append(measure(side, cmd, port, prompts, args, log_dir))
    print(f"\nmodel {Path(args.model).name}, {args.parallel} sequences x {args.ctx} tokens, {args.rounds} rounds")
    print("| server | RSS loaded MiB | peak RSS MiB | RSS at end MiB | prefix cache RAM MiB | peak / llama-server |")
    print("|---|---|---|---|---|---|")
    base = max(x["peak"] for x in results[LLAMA])
    for side in sides:
        runs = results[side]
        peak = max(x["peak"] for x in runs)
        cache = [x["host_cache"] for x in runs if "host_cache" in x]
        cache_col = f"{max(cache):.0f}" if cache else "-"
        loaded, end = max(x["loaded"] for x in runs), max(x["end"] for x in runs)
        print(f"| {side} | {loaded:.0f} | {peak:.0f} | {end:.0f} | {cache_col} | {peak / base:.2f} |")
    print(f"(logs in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
