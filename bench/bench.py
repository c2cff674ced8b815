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
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from client import decode_rate, stream_message, ttft
from common import (
    DEFAULT_LLAMA_BIN,
    LLAMA,
    PENSIEVE,
    SMOLLM,
    Server,
    add_run_options,
    binary_version,
    cpu_jiffies,
    cpu_model,
    fmt_stat,
    free_port,
    install_signal_handlers,
    kill_all,
    log,
    nonce,
    proc_jiffies,
    server_env,
    summarize,
    synthetic_text,
    wait_for_idle,
)

SIDES = (LLAMA, PENSIEVE)

DEFAULT_MODEL_CANDIDATES = [SMOLLM]

DECODE_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a hidden cave under the "
    "rocks. Describe every room of the lighthouse, the weather, the sea, the cave and what he "
    "finds there, step by step, in many paragraphs."
)


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
        dst[:] = src  # memcpy/memmove of n bytes: reads n, writes n
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
        "copy_bytes_per_s": copy_best,  # bytes copied per second (traffic is 2x this)
        "read_bytes_per_s": read_best,  # bytes scanned per second
    }


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
    stream_message(
        srv.port, make_body(model_name, "You are a helpful assistant.", "Say hello.", 8), args.request_timeout
    )
    # CPU used by anything but the server and this script while measuring: the noise gauge
    busy0, total0 = cpu_jiffies()
    srv0, self0 = proc_jiffies(srv.proc.pid), proc_jiffies(os.getpid())

    dec_rates = []
    dec_runs = []
    for _ in range(args.decode_reps):
        r = stream_message(
            srv.port,
            make_body(model_name, "You are a helpful assistant.", DECODE_PROMPT, args.decode_tokens),
            args.request_timeout,
        )
        rate = decode_rate(r)
        dec_rates.append(rate)
        dec_runs.append(r)
        if r["output_tokens"] < args.decode_tokens * 0.5:
            log(
                f"warning: {srv.side} decode run stopped after {r['output_tokens']} tokens "
                f"(stop_reason={r['stop_reason']})"
            )
    res["decode_tok_s"] = statistics.median([x for x in dec_rates if x]) if any(dec_rates) else None
    res["decode_output_tokens"] = dec_runs[-1]["output_tokens"]
    res["decode_runs"] = dec_runs

    pre_runs = []
    for _ in range(args.prefill_reps):
        n = nonce()
        # the nonce opens the system prompt (right after the chat template's first tokens) and
        # the user text, so no prefix of this prompt was seen before
        system = f"[session {n}] You are a careful reader."
        user = f"{n}\n\n{prefill_body_text}\n\nSummarize the text above in a few sentences."
        r = stream_message(srv.port, make_body(model_name, system, user, args.prefill_max_tokens), args.request_timeout)
        pre_runs.append(r)
    r = pre_runs[-1]
    t = [ttft(x) for x in pre_runs]
    rates = []
    for x, tt in zip(pre_runs, t):
        if tt and x["prompt_tokens"]:
            rates.append(x["prompt_tokens"] / tt)
        if x["cached_tokens"] and x["prompt_tokens"] and x["cached_tokens"] > 0.02 * x["prompt_tokens"]:
            log(
                f"warning: {srv.side} served {x['cached_tokens']}/{x['prompt_tokens']} prompt "
                f"tokens from cache on a 'cold' prompt"
            )
    res["ttft_s"] = statistics.median([x for x in t if x]) if any(t) else None
    res["prefill_tok_s"] = statistics.median(rates) if rates else None
    res["prefill_prompt_tokens"] = r["prompt_tokens"]
    res["prefill_cached_tokens"] = r["cached_tokens"]
    long_rates = [decode_rate(x) for x in pre_runs]
    long_rates = [x for x in long_rates if x]
    res["decode_long_tok_s"] = statistics.median(long_rates) if long_rates else None
    res["decode_long_output_tokens"] = r["output_tokens"]
    res["prefill_runs"] = pre_runs

    for x in dec_runs + pre_runs:  # keep the JSON as it was: no per-delta times, no content
        x.pop("delta_times", None)
        x.pop("content", None)
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
            ratio = b["median"] / a["median"] if a and b and a["median"] and key != "other_cpu_pct" else None
            row += f"{(f'{ratio:.2f}x' if ratio else '-'):>16}"
        print(row)
    wide = [
        (s, label)
        for s in sides
        for key, label, _, _ in METRICS[:4]
        if summary[s].get(key) and summary[s][key]["spread"] and summary[s][key]["spread"] > 0.15
    ]
    for s, label in wide:
        print(f"note: {s} '{label}' spread > 15% of median: noisy machine, consider a rerun")
    for s in sides:
        o = summary[s].get("other_cpu_pct")
        if o and o["max"] > 10:
            print(
                f"note: other processes used up to {o['max']:.0f}% of the machine while {s} was "
                f"measured: its numbers are not trustworthy, rerun on a quiet machine"
            )


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
    ap.add_argument(
        "--prefill-words",
        type=int,
        default=1740,
        help="words of synthetic text in the cold prompt (1740: ~2,000 tokens with SmolLM2)",
    )
    ap.add_argument(
        "--prefill-max-tokens",
        type=int,
        default=32,
        help="max_tokens of the cold-prompt request (its decode is 'decode after prompt')",
    )
    ap.add_argument("--prefill-reps", type=int, default=1, help="cold-prompt requests per round")
    add_run_options(ap)
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the memory bandwidth measurement")
    ap.add_argument("--llama-args", default="", help="extra arguments for llama-server (one string)")
    ap.add_argument("--pensieve-args", default="", help="extra arguments for pensieve serve (one string)")
    ap.add_argument("--log-dir", help="server logs (default: a new temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args()

    install_signal_handlers()

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
            return [
                bins[LLAMA],
                "-m",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-np",
                "1",
                "-c",
                str(args.ctx),
                "-t",
                str(args.threads),
                "--no-webui",
                *shlex.split(args.llama_args),
            ]
        return [
            bins[PENSIEVE],
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ctx",
            str(args.ctx),
            "--threads",
            str(args.threads),
            *shlex.split(args.pensieve_args),
        ]

    versions = {s: binary_version(bins[s]) for s in sides}

    bw = None
    if not args.no_bandwidth:
        # measured before and after the runs (best of both): one of them may hit a busy moment
        log("measuring memory bandwidth (512 MiB copy and scan)")
        bw = measure_bandwidth()

    env = server_env()
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
                    busy_before = (
                        wait_for_idle(args.wait_idle, args.idle_threshold / 100) if args.wait_idle > 0 else None
                    )
                    port = free_port()
                    srv = Server(s, command(s, port), port, log_dir / f"{s}.log", env=env)
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
                    log(
                        f"round {rnd + 1}/{args.rounds} {s}: decode {_f(r['decode_tok_s'])} tok/s "
                        f"({r['decode_output_tokens']} tok), prefill {_f(r['prefill_tok_s'])} tok/s "
                        f"({r['prefill_prompt_tokens']} tok, TTFT {_f(r['ttft_s'], 2)} s), "
                        f"decode after prompt {_f(r['decode_long_tok_s'])} tok/s, "
                        f"peak RSS {_f((r['peak_rss_kib'] or 0) / 1024, 0)} MiB, "
                        f"other CPU {_f(r.get('other_cpu_pct'), 0)}%"
                    )
                    noisy = (r.get("other_cpu_pct") or 0) > args.max_other_cpu
                    if noisy and attempt < args.retry_noisy:
                        log(
                            f"other processes took {r['other_cpu_pct']:.0f}% of the machine "
                            f"(> {args.max_other_cpu:.0f}%): discarding this round of {s}, redoing it"
                        )
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
        kill_all()

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
    print(
        f"model: {model} ({model_bytes / 1e6:.1f} MB), threads {args.threads}, ctx {args.ctx}, "
        f"rounds {len(results[sides[0]])}{' (interrupted)' if interrupted else ''}"
        f"{f', {len(discarded)} noisy round(s) discarded and redone' if discarded else ''}"
    )
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    for s in sides:
        print(f"{s}: {bins[s]}  ({'; '.join(versions[s].splitlines()) or '?'})")
    if any(results[s] for s in sides):
        r0 = next(results[s][0] for s in sides if results[s])
        print(f"cold prompt: {r0['prefill_prompt_tokens']} tokens; decode request: max_tokens {args.decode_tokens}")
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
        print(
            f"memory bandwidth: copy {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s (bytes copied/s), "
            f"scan {bw['read_bytes_per_s'] / 1e9:.1f} GB/s (bytes read/s)"
        )
        print(
            f"decode upper bound = bandwidth / model bytes: {bound['copy']:.0f} tok/s (copy), "
            f"{bound['read']:.0f} tok/s (scan) for {model_bytes / 1e6:.1f} MB"
        )
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
                {
                    k: (summary[PENSIEVE][k]["median"] / summary[LLAMA][k]["median"])
                    for k, *_ in METRICS
                    if summary[PENSIEVE].get(k)
                    and summary[LLAMA].get(k)
                    and summary[LLAMA][k]["median"]
                    and k != "other_cpu_pct"
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
            f"{len(failures)} round(s) failed: "
            + "; ".join(f"{f['side']} round {f['round']}: {f['error'][:200]}" for f in failures)
        )
    return 130 if interrupted else (1 if failures else 0)


def _f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


if __name__ == "__main__":
    sys.exit(main())
