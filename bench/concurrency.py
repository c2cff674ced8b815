#!/usr/bin/env python3
"""N concurrent streams: Pensieve vs llama-server, aggregate tok/s and inter-token latency.

Stdlib only (Python 3.11). For each N in --streams, each server is started with room for N
sequences of --ctx tokens each (llama-server `-np N -c N*ctx`; pensieve `--parallel N` when its
binary has that flag), warmed up with one short request, and then N streaming
`POST /v1/messages` requests are started at once (one thread each, released by a barrier), each
with a distinct short prompt asking for a long answer, temperature 0, max_tokens --max-tokens.

  aggregate tok/s  = all output tokens / wall time of the concurrent window
                     (first request sent -> last stream's message_stop)
  ITL p50 / p99    = percentiles of the gaps between consecutive content deltas of each stream,
                     pooled over the N streams of the window
  TTFT p50 / max   = request sent -> first content delta; a max TTFT close to the window means
                     the server ran the streams one after another
  overlap          = sum over streams of (last delta - first delta) / window: the mean number of
                     streams generating at the same time (N when fully concurrent, ~1 when serial)

Servers alternate A B A B over --rounds rounds, one at a time; medians [min-max] and the ratio
pensieve / llama-server of medians. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from client import StreamError, decode_rate, gaps, stream_message, ttft
from common import (
    DEFAULT_LLAMA_BIN,
    DEFAULT_PENSIEVE_BIN,
    LLAMA,
    PENSIEVE,
    SMOLLM,
    NoiseGauge,
    Server,
    add_run_options,
    binary_version,
    check_executable,
    check_llama_slots,
    cpu_model,
    fmt_stat,
    fnum,
    free_port,
    install_signal_handlers,
    kill_all,
    llama_command,
    log,
    pensieve_command,
    pensieve_flags,
    percentile,
    server_env,
    set_log_tag,
    summarize,
    wait_for_idle,
)

SIDES = (LLAMA, PENSIEVE)

TOPICS = [
    "a lighthouse keeper who finds a hidden cave under the rocks",
    "a clockmaker who builds a clock that runs backwards",
    "a girl who trains a crow to carry letters across a mountain",
    "two rival bakers in a small harbor town during a long winter",
    "an engineer repairing a bridge during a storm",
    "a botanist who discovers a new kind of tree on a remote island",
    "a train that stops at a village that is not on any map",
    "an old sailor teaching a boy to navigate by the stars",
    "a librarian who finds a letter hidden in a returned book",
    "a beekeeper whose bees start building a strange new hive",
    "a musician who loses her violin on the night of a concert",
    "a mapmaker who is asked to draw a city that does not exist yet",
]


def prompt(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    extra = f" (version {i // len(TOPICS) + 1})" if i >= len(TOPICS) else ""
    return (
        f"Write a long, detailed story about {topic}{extra}. Describe the places, the weather, "
        f"the people and what happens, step by step, in many paragraphs."
    )


def run_window(port: int, model_name: str, n: int, max_tokens: int, timeout: float) -> dict:
    """N streams released at once; returns the window's metrics and the per-stream results."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        body = {
            "model": model_name,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "system": "You are a helpful assistant.",
            "messages": [{"role": "user", "content": prompt(i)}],
        }
        try:
            barrier.wait(timeout=60)
            results[i] = stream_message(port, body, timeout)
        except (StreamError, OSError, threading.BrokenBarrierError) as e:
            results[i] = e
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 120)
    errors = [f"stream {i}: {r!r}" for i, r in enumerate(results) if not isinstance(r, dict)]
    if errors:
        raise RuntimeError("; ".join(errors)[:1000])
    t0 = min(r["t_sent"] for r in results)
    t1 = max(r["t_end"] for r in results)
    window = t1 - t0
    tokens = sum(r["output_tokens"] for r in results)
    all_gaps = [g for r in results for g in gaps(r)]
    ttfts = [ttft(r) for r in results]
    busy = sum(
        (r["t_last_delta"] - r["t_first_delta"])
        for r in results
        if r["t_first_delta"] is not None and r["t_last_delta"] is not None
    )
    short = [i for i, r in enumerate(results) if r["output_tokens"] < max_tokens * 0.5]
    if short:
        log(f"warning: stream(s) {short} stopped early ({[results[i]['output_tokens'] for i in short]} tokens)")
    streams = []
    for r in results:
        streams.append(
            {
                "ttft_s": ttft(r),
                "decode_tok_s": decode_rate(r),
                "output_tokens": r["output_tokens"],
                "prompt_tokens": r["prompt_tokens"],
                "stop_reason": r["stop_reason"],
                "t_sent": r["t_sent"] - t0,
                "t_first_delta": (r["t_first_delta"] or t0) - t0,
                "t_end": r["t_end"] - t0,
                "n_deltas": r["n_deltas"],
                "notes": r["notes"],
                "text_head": r["text_head"],
            }
        )
    return {
        "streams_n": n,
        "window_s": window,
        "output_tokens": tokens,
        "aggregate_tok_s": tokens / window if window > 0 else None,
        "itl_p50_ms": 1000 * percentile(all_gaps, 50) if all_gaps else None,
        "itl_p99_ms": 1000 * percentile(all_gaps, 99) if all_gaps else None,
        "n_gaps": len(all_gaps),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_max_s": max(t for t in ttfts if t is not None) if any(t is not None for t in ttfts) else None,
        "stream_decode_tok_s": percentile([s["decode_tok_s"] for s in streams], 50),
        "overlap": busy / window if window > 0 else None,
        "streams": streams,
    }


METRICS = [
    # key, label, format, higher_is_better
    ("aggregate_tok_s", "aggregate tok/s", "{:.1f}", True),
    ("itl_p50_ms", "ITL p50 (ms)", "{:.1f}", False),
    ("itl_p99_ms", "ITL p99 (ms)", "{:.1f}", False),
    ("ttft_p50_s", "TTFT p50 (s)", "{:.2f}", False),
    ("ttft_max_s", "TTFT max (s)", "{:.2f}", False),
    ("stream_decode_tok_s", "per-stream decode tok/s", "{:.1f}", True),
    ("overlap", "overlap (streams at once)", "{:.2f}", True),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}", False),
    ("other_cpu_pct", "other CPU while measuring %", "{:.0f}", False),
]


def print_table(summary: dict, sides: list[str], streams: list[int]) -> None:
    w0 = 30
    header = f"{'N':>3} {'metric':<{w0}}" + "".join(f"{s + ' median [min-max]':>30}" for s in sides)
    if len(sides) == 2:
        header += f"{'pensieve/llama':>16}"
    print(header)
    print("-" * len(header))
    for n in streams:
        for key, label, f, _ in METRICS:
            row = f"{n:>3} {label:<{w0}}"
            for s in sides:
                row += f"{fmt_stat(summary[s][n].get(key), f):>30}"
            if len(sides) == 2:
                a, b = summary[LLAMA][n].get(key), summary[PENSIEVE][n].get(key)
                ratio = b["median"] / a["median"] if a and b and a["median"] and key != "other_cpu_pct" else None
                row += f"{(f'{ratio:.2f}x' if ratio else '-'):>16}"
            print(row)
        print()
    for s in sides:
        for n in streams:
            st = summary[s][n].get("aggregate_tok_s")
            if st and st["spread"] and st["spread"] > 0.15:
                print(f"note: {s} N={n} aggregate tok/s spread > 15% of median: noisy, consider a rerun")
            o = summary[s][n].get("other_cpu_pct")
            if o and o["max"] > 10:
                print(
                    f"note: other processes used up to {o['max']:.0f}% of the machine while {s} N={n} "
                    f"was measured: not trustworthy, rerun on a quiet machine"
                )


def main() -> int:
    set_log_tag("concurrency")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SMOLLM, help="GGUF file (default: the cached SmolLM2-135M Q4_1)")
    ap.add_argument("--pensieve-bin", default=DEFAULT_PENSIEVE_BIN)
    ap.add_argument("--llama-server-bin", default=os.environ.get("LLAMA_SERVER_BIN", DEFAULT_LLAMA_BIN))
    ap.add_argument("--only", choices=SIDES, help="benchmark one side only")
    ap.add_argument("--streams", default="1,4,8", help="comma-separated stream counts (default 1,4,8)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096, help="context per sequence (default 4096)")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each stream (default 128)")
    ap.add_argument(
        "--pensieve-parallel",
        choices=["auto", "always", "never"],
        default="auto",
        help="pass --parallel N to pensieve: auto = when `pensieve serve --help` lists it",
    )
    add_run_options(ap, what="window")
    ap.add_argument("--llama-args", default="", help="extra arguments for llama-server (one string)")
    ap.add_argument("--pensieve-args", default="", help="extra arguments for pensieve serve (one string)")
    ap.add_argument("--log-dir", help="server logs (default: a new temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args()
    install_signal_handlers()

    model = os.path.abspath(args.model)
    if not os.path.isfile(model):
        ap.error(f"model not found: {model} (scripts/fetch-test-models.sh)")
    model_name = Path(model).stem
    streams = [int(x) for x in args.streams.split(",") if x.strip()]
    sides = [args.only] if args.only else list(SIDES)
    bins = {LLAMA: args.llama_server_bin, PENSIEVE: args.pensieve_bin}
    hints = {LLAMA: "scripts/build-llama-server.sh", PENSIEVE: "cargo build --release"}
    for s in sides:
        err = check_executable(bins[s], hints[s])
        if err:
            ap.error(f"{s} binary {err}")
    versions = {s: binary_version(bins[s]) for s in sides}
    pass_parallel = False
    if PENSIEVE in sides:
        has = "--parallel" in pensieve_flags(bins[PENSIEVE])
        pass_parallel = args.pensieve_parallel == "always" or (args.pensieve_parallel == "auto" and has)
        if not pass_parallel and max(streams) > 1:
            log(
                "warning: not passing --parallel to pensieve (its --help has no such flag or "
                "--pensieve-parallel never): it serves one sequence at a time"
            )
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pensieve-concurrency-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    def command(side: str, port: int, n: int) -> list[str]:
        if side == LLAMA:
            return llama_command(bins[LLAMA], model, port, args.threads, n, args.ctx, shlex.split(args.llama_args))
        return pensieve_command(
            bins[PENSIEVE],
            model,
            port,
            args.threads,
            args.ctx,
            shlex.split(args.pensieve_args),
            parallel=n if pass_parallel else None,
        )

    env = server_env()
    results: dict = {s: {n: [] for n in streams} for s in sides}
    discarded, failures, slot_info = [], [], {}
    interrupted = False
    started = time.time()
    try:
        for rnd in range(args.rounds):
            for s in sides:
                for n in streams:
                    for attempt in range(args.retry_noisy + 1):
                        busy_before = wait_for_idle(args.wait_idle, args.idle_threshold / 100)
                        port = free_port()
                        srv = Server(s, command(s, port, n), port, log_dir / f"{s}.log", env=env)
                        try:
                            srv.start(args.health_timeout)
                            if s == LLAMA:
                                slot_info[n] = check_llama_slots(srv)
                                if slot_info[n] and slot_info[n]["n_ctx_slot"] != args.ctx:
                                    log(f"warning: llama-server slot context {slot_info[n]} != --ctx {args.ctx}")
                            stream_message(
                                port,
                                {
                                    "model": model_name,
                                    "max_tokens": 8,
                                    "stream": True,
                                    "messages": [{"role": "user", "content": "Say hello."}],
                                },
                                args.request_timeout,
                            )  # warm-up, not measured
                            gauge = NoiseGauge(srv.pid)
                            r = run_window(port, model_name, n, args.max_tokens, args.request_timeout)
                            r.update(gauge.stop())
                            rss = srv.peak_rss_kib()
                            r["peak_rss_mib"] = rss / 1024 if rss else None
                            r["startup_s"] = srv.startup_s
                        except (RuntimeError, OSError, ValueError) as e:
                            failures.append({"side": s, "streams": n, "round": rnd + 1, "error": str(e)})
                            log(f"round {rnd + 1} {s} N={n} FAILED: {e}\n--- server log tail:\n{srv.log_tail()}")
                            if sum(1 for f in failures if f["side"] == s) >= 3:
                                raise RuntimeError(f"{s} failed three times; giving up") from e
                            break
                        finally:
                            srv.stop()
                        r.update(
                            round=rnd + 1,
                            attempt=attempt + 1,
                            busy_before_pct=None if busy_before is None else 100 * busy_before,
                        )
                        log(
                            f"round {rnd + 1}/{args.rounds} {s} N={n}: {fnum(r['aggregate_tok_s'])} tok/s "
                            f"aggregate ({r['output_tokens']} tokens in {r['window_s']:.1f} s), ITL p50 "
                            f"{fnum(r['itl_p50_ms'])} ms p99 {fnum(r['itl_p99_ms'])} ms, TTFT max "
                            f"{fnum(r['ttft_max_s'], 2)} s, overlap {fnum(r['overlap'], 2)}, "
                            f"other CPU {fnum(r.get('other_cpu_pct'), 0)}%"
                        )
                        if (r.get("other_cpu_pct") or 0) > args.max_other_cpu and attempt < args.retry_noisy:
                            log(f"other processes took {r['other_cpu_pct']:.0f}% of the machine: redoing")
                            discarded.append(r)
                            continue
                        results[s][n].append(r)
                        break
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): servers stopped; summarizing what was measured")
    except RuntimeError as e:
        interrupted = True
        log(f"stopped: {e}; summarizing what was measured")
    finally:
        kill_all()

    summary = {
        s: {n: {k: summarize([r.get(k) for r in results[s][n]]) for k, *_ in METRICS} for n in streams} for s in sides
    }
    print()
    print(
        f"model: {model} ({os.path.getsize(model) / 1e6:.1f} MB), threads {args.threads}, ctx per "
        f"sequence {args.ctx}, max_tokens {args.max_tokens}, rounds {args.rounds}"
        f"{' (interrupted)' if interrupted else ''}"
        f"{f', {len(discarded)} noisy window(s) redone' if discarded else ''}"
    )
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    for s in sides:
        print(f"{s}: {bins[s]}  ({'; '.join(versions[s].splitlines()) or '?'})")
        print(f"  started as: {' '.join(command(s, 0, streams[-1]))}")
    if PENSIEVE in sides and not pass_parallel:
        print("  (pensieve got no --parallel: one sequence at a time)")
    if slot_info:
        print(f"llama-server slots as logged: {slot_info}")
    print()
    print_table(summary, sides, streams)
    print(f"server logs: {log_dir}")
    if args.json:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "interrupted": interrupted,
            "model": model,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "args": vars(args),
            "versions": versions,
            "pensieve_parallel_passed": pass_parallel,
            "commands": {s: {n: command(s, 0, n) for n in streams} for s in sides},
            "llama_slots": slot_info,
            "summary": summary,
            "ratios_pensieve_over_llama": (
                {
                    n: {
                        k: summary[PENSIEVE][n][k]["median"] / summary[LLAMA][n][k]["median"]
                        for k, *_ in METRICS
                        if summary[PENSIEVE][n].get(k)
                        and summary[LLAMA][n].get(k)
                        and summary[LLAMA][n][k]["median"]
                        and k != "other_cpu_pct"
                    }
                    for n in streams
                }
                if len(sides) == 2
                else None
            ),
            "runs": results,
            "discarded_noisy_runs": discarded,
            "failures": failures,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"json: {args.json}")
    if failures:
        print(
            f"{len(failures)} window(s) failed: "
            + "; ".join(f"{f['side']} N={f['streams']} round {f['round']}: {f['error'][:200]}" for f in failures)
        )
    return 130 if interrupted else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
