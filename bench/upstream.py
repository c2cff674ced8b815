#!/usr/bin/env python3
"""Pensieve in front of llama-server replicas (`pensieve serve --upstream URL ...`, issue 19).

Stdlib only (Python 3.11). Replicas are llama-server processes, each pinned to its own cores
(`taskset`), started by this script; Pensieve runs in front of them, unpinned.

  streams   N concurrent streaming `POST /v1/messages` (as bench/concurrency.py sends them) through
            Pensieve, against one replica and against two: aggregate tok/s of the window. The
            single replica gets every slot (-np N) on one core set; the two get N/2 slots each on
            their own. Rounds alternate one, two, one, two; medians and the ratio two / one.
  sessions  S Claude Code-shaped conversations (bench/agent_replay.py's shapes, scaled down with
            the --*-chars options) run side by side through Pensieve over two replicas, T turns
            each, with `--upstream-routing cache-aware` and then `round-robin` (alternating over
            --rounds): the cached share of turns from the second on (cached / prompt tokens, as
            the replicas report them), summed over those turns; and how much of the turn before's
            prompt each such turn found cached (what routing decides: the rest of a turn is new).

Results go to --out as JSON; a table is printed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import agent_replay as replay
from client import send
from common import (
    DEFAULT_LLAMA_BIN,
    DEFAULT_PENSIEVE_BIN,
    SMOLLM,
    Server,
    free_port,
    install_signal_handlers,
    kill_all,
    llama_command,
    log,
    set_log_tag,
)
from concurrency import run_window


def replicas(args, cores: list[str], parallel: int, logs: Path) -> list[Server]:
    out = []
    for i, cpus in enumerate(cores):
        port = free_port()
        threads = len(cpus.split(","))
        cmd = [
            "taskset",
            "-c",
            cpus,
            *llama_command(args.llama_server_bin, args.model, port, threads, parallel, args.ctx, []),
        ]
        srv = Server(f"replica{i}", cmd, port, logs / f"replica{i}.log")
        srv.start(args.health_timeout)
        out.append(srv)
    return out


def front(args, reps: list[Server], logs: Path, routing: str = "cache-aware") -> Server:
    port = free_port()
    cmd = [
        args.pensieve_bin,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upstream-model",
        "m",
        "--upstream-routing",
        routing,
    ]
    for r in reps:
        cmd += ["--upstream", f"http://127.0.0.1:{r.port}/v1"]
    srv = Server("pensieve", cmd, port, logs / "pensieve.log")
    srv.start(args.health_timeout)
    return srv


def stop(*servers: Server) -> None:
    for s in servers:
        s.stop()


def streams(args, logs: Path) -> dict:
    n = args.streams
    cores = args.cores.split("/")
    layouts = {"one": ([",".join(cores)] if args.one_gets_all_cores else [cores[0]], n), "two": (cores, n // 2)}
    runs: dict[str, list[dict]] = {"one": [], "two": []}
    for rnd in range(args.rounds):
        for name, (core_sets, parallel) in layouts.items():
            reps = replicas(args, core_sets, parallel, logs)
            srv = front(args, reps, logs)
            try:
                send(
                    srv.port,
                    "anthropic",
                    {"model": "m", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "Hi."}]},
                    args.request_timeout,
                )
                w = run_window(srv.port, "m", n, args.max_tokens, args.request_timeout)
            finally:
                stop(srv, *reps)
            w.pop("streams", None)
            log(f"round {rnd + 1} {name}: {w['aggregate_tok_s']:.1f} tok/s aggregate, TTFT p50 {w['ttft_p50_s']:.2f} s")
            runs[name].append(w)
    med = {k: statistics.median(w["aggregate_tok_s"] for w in v) for k, v in runs.items()}
    return {"runs": runs, "median_tok_s": med, "ratio_two_over_one": med["two"] / med["one"]}


def run_sessions(args, port: int) -> list[dict]:
    """S conversations side by side, each T turns; every request's usage."""
    shared = replay.Shared(args, replay.nonce() if args.nonce else "")
    prompts = replay.syn.FIRST_PROMPTS
    records: list[dict] = []
    lock = threading.Lock()
    errors: list[str] = []

    def one(s: int) -> None:
        conv = replay.Conversation(
            f"C{s}", shared, prompts[s % len(prompts)] + f" (task {s})", s % len(shared.reminders), args.seed + 100 * s
        )
        prev = None
        for turn in range(1, args.turns + 1):
            if prev is not None:
                conv.advance(prev, "synthetic")
            try:
                r = send(port, "anthropic", conv.body("m", args.session_max_tokens), args.request_timeout)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(f"C{s} turn {turn}: {e!r}")
                return
            # The final usage: behind an upstream, message_start cannot know the prompt's size yet.
            u = r["usage"]
            prompt = (
                u.get("input_tokens", 0) + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)
            )
            with lock:
                records.append(
                    {
                        "session": s,
                        "turn": turn,
                        "prompt_tokens": prompt,
                        "cached_tokens": u.get("cache_read_input_tokens", 0),
                    }
                )
            prev = r

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in range(args.sessions)]
    for t in threads:
        t.start()
        time.sleep(args.stagger)
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors)[:1000])
    return records


def sessions(args, logs: Path) -> dict:
    cores = args.cores.split("/")
    runs: dict[str, list[dict]] = {"cache-aware": [], "round-robin": []}
    for rnd in range(args.rounds):
        for routing in ("cache-aware", "round-robin"):
            reps = replicas(args, cores, args.sessions, logs)
            srv = front(args, reps, logs, routing)
            try:
                records = run_sessions(args, srv.port)
                with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=10) as r:
                    health = json.load(r)
            finally:
                stop(srv, *reps)
            later = [r for r in records if r["turn"] >= 2]
            prompt = sum(r["prompt_tokens"] or 0 for r in later)
            cached = sum(r["cached_tokens"] for r in later)
            share = cached / prompt if prompt else None
            before = {(r["session"], r["turn"]): r["prompt_tokens"] or 0 for r in records}
            reusable = sum(before.get((r["session"], r["turn"] - 1), 0) for r in later)
            reuse = min(cached, reusable) / reusable if reusable else None
            log(
                f"round {rnd + 1} {routing}: turns >= 2 read {cached}/{prompt} prompt tokens from cache "
                f"({100 * share:.1f}%; {100 * reuse:.1f}% of the turns before)"
            )
            runs[routing].append(
                {
                    "cached_share": share,
                    "reuse_of_turn_before": reuse,
                    "prompt_tokens": prompt,
                    "cached_tokens": cached,
                    "records": records,
                    "upstreams": health.get("upstreams"),
                }
            )
    med = {k: statistics.median(r["cached_share"] for r in v) for k, v in runs.items()}
    reuse = {k: statistics.median(r["reuse_of_turn_before"] for r in v) for k, v in runs.items()}
    return {"runs": runs, "median_cached_share": med, "median_reuse_of_turn_before": reuse}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="streams,sessions")
    ap.add_argument("--model", default=SMOLLM)
    ap.add_argument("--pensieve-bin", default=DEFAULT_PENSIEVE_BIN)
    ap.add_argument("--llama-server-bin", default=os.environ.get("LLAMA_SERVER_BIN", DEFAULT_LLAMA_BIN))
    ap.add_argument("--cores", default="0/1", help="each replica's CPUs, replicas split by / (default 0/1)")
    ap.add_argument(
        "--one-gets-all-cores",
        action="store_true",
        help="the single replica runs on every replica's cores (default: the first's only)",
    )
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=8192, help="context per slot")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--stagger", type=float, default=0.5, help="seconds between the sessions' starts")
    ap.add_argument("--session-max-tokens", type=int, default=32)
    # agent_replay.py's shapes scaled to fit SmolLM2's 8k context (~5k-token first turns).
    ap.add_argument("--system-chars", type=int, default=7000)
    ap.add_argument("--tools-chars", type=int, default=16000)
    ap.add_argument("--n-tools", type=int, default=8)
    ap.add_argument("--reminder-chars", type=int, default=6000)
    ap.add_argument("--result-chars", type=int, default=600)
    ap.add_argument("--no-billing-line", action="store_true")
    ap.add_argument("--no-nonce", dest="nonce", action="store_false")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--health-timeout", type=float, default=120)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--out", default=None, help="JSON results (default: a temp file)")
    args = ap.parse_args()
    set_log_tag("upstream")
    install_signal_handlers()
    logs = Path(tempfile.mkdtemp(prefix="pensieve-upstream-bench-"))
    out: dict = {"args": vars(args), "logs": str(logs)}
    try:
        work = args.workloads.split(",")
        if "streams" in work:
            out["streams"] = streams(args, logs)
        if "sessions" in work:
            out["sessions"] = sessions(args, logs)
    finally:
        kill_all()
    path = args.out or str(logs / "upstream.json")
    Path(path).write_text(json.dumps(out, indent=1))
    print(f"\nresults: {path}")
    if "streams" in out:
        s = out["streams"]
        runs = {k: ", ".join(f"{w['aggregate_tok_s']:.1f}" for w in v) for k, v in s["runs"].items()}
        print(
            f"{args.streams} streams, aggregate tok/s: one replica {runs['one']} (median "
            f"{s['median_tok_s']['one']:.1f}); two replicas {runs['two']} (median {s['median_tok_s']['two']:.1f}); "
            f"two / one = {s['ratio_two_over_one']:.3f}"
        )
    if "sessions" in out:
        s = out["sessions"]
        for k, v in s["runs"].items():
            shares = ", ".join(f"{100 * r['cached_share']:.1f}%" for r in v)
            reuse = ", ".join(f"{100 * r['reuse_of_turn_before']:.1f}%" for r in v)
            print(
                f"{args.sessions} sessions x {args.turns} turns, {k}: cached share of turns >= 2 {shares} "
                f"(median {100 * s['median_cached_share'][k]:.1f}%); of the turn before's prompt {reuse}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
