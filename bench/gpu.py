#!/usr/bin/env python3
"""GPU benchmarks: Pensieve against llama-server (stock, and with --backend-sampling) on one card.

Stdlib only. Every server runs the same GGUF with all layers on the GPU, one at a time; each round
starts every side in turn (alternating), measures, and stops it. Workloads:

  decode   one stream: a P-token prompt (token ids), G tokens: decode tok/s and TTFT
  prefill  one L-token prompt, 1 token out: prompt tok/s (from TTFT)
  streams  N concurrent streams, each its own P-token prompt, G tokens each: aggregate tok/s
           (all tokens / window), steady aggregate (while all N stream), TTFT p50, ITL p50
  swarm    S Claude Code-shaped sessions (bench/agent_replay.py's system prompt, 12 tools and
           tool results: about 13k tokens shared) running T turns each at once, over
           /v1/messages on both servers: aggregate output tok/s and turn TTFT p50

Prompts of decode/prefill/streams are random token ids below 30,000 (in every test model's vocabulary) (the same
ids for every side), so no prefix is shared and no cache helps. Output stops at max_tokens or
when the model ends (with random weights that is rare, and the same for both: same kernels).
Sides: pensieve, llama-server, llama-server-bs, and pensieve:NAME for Pensieve with the flags of
--variant NAME=FLAGS. VRAM: the peak of nvidia-smi's memory.used while a side runs. llama-bench (--llama-bench-bin)
gives the kernels' own tg128 and pp512 on the same build.

usage: gpu.py --model M.gguf --pensieve-bin P --llama-server-bin L [--llama-bench-bin B]
              [--workloads decode,prefill,streams,swarm] [--streams 32,64] [--rounds 2] --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_replay
import synthetic as syn
from client import StreamError, gaps, send, stream_completion, ttft
from common import Server, free_port, install_signal_handlers, kill_all, log, percentile

PENSIEVE, LLAMA, LLAMA_BS = "pensieve", "llama-server", "llama-server-bs"


def pensieve_variant(side: str, args) -> list[str] | None:
    """The extra flags of a Pensieve side: `pensieve` has none, `pensieve:NAME` those
    --variant NAME=FLAGS gives (e.g. host=--backend-sampling false); None: not Pensieve."""
    if side == PENSIEVE:
        return []
    name = side.removeprefix(f"{PENSIEVE}:")
    if name == side:
        return None
    for v in args.variant:
        key, _, flags = v.partition("=")
        if key == name:
            return shlex.split(flags)
    raise SystemExit(f"side {side}: no --variant {name}=FLAGS")


class VramSampler:
    """Peak memory.used (MiB) of GPU 0 while running, sampled every 0.25 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=memory.used",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ],
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak = max(self.peak, int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def command(side: str, args, port: int, parallel: int, ctx: int) -> list[str]:
    variant = pensieve_variant(side, args)
    if variant is not None:
        return [
            args.pensieve_bin,
            "serve",
            "--model",
            args.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--ctx",
            str(ctx),
            "--threads",
            str(args.threads),
            "--gpu-layers",
            "999",
            *shlex.split(args.pensieve_args),
            *variant,
        ]
    extra = ["--backend-sampling"] if side == LLAMA_BS else []
    return [
        args.llama_server_bin,
        "-m",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(parallel),
        "-c",
        str(parallel * ctx),
        "-t",
        str(args.threads),
        "-ngl",
        "999",
        "--no-webui",
        *extra,
        *shlex.split(args.llama_args),
    ]


def prompt_ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 30_000) for _ in range(n)]


def completion(port: int, prompt: list[int], max_tokens: int, timeout: float) -> dict:
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return stream_completion(port, body, timeout)


def run_concurrently(jobs: list) -> list:
    """Runs each zero-argument job on its own thread, released together; results in order."""
    results: list = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def run(i, job):
        gate.wait()
        try:
            results[i] = job()
        except (StreamError, OSError) as e:
            results[i] = {"error": str(e)}

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def window_stats(results: list[dict], t0: float) -> dict:
    ok = [r for r in results if "error" not in r and r.get("delta_times")]
    errors = [r["error"] for r in results if "error" in r]
    if not ok:
        return {"errors": errors}
    total = sum(r["output_tokens"] for r in ok)
    last = max(r["t_last_delta"] for r in ok)
    first_all = max(r["t_first_delta"] for r in ok)
    last_any = min(r["t_last_delta"] for r in ok)
    steady = None
    if last_any - first_all > 0.5:
        n = sum(sum(1 for t in r["delta_times"] if first_all < t <= last_any) for r in ok)
        steady = n / (last_any - first_all)
    itl = [g for r in ok for g in gaps(r)]
    return {
        "streams": len(results),
        "errors": errors,
        "tokens": total,
        "window_s": last - t0,
        "agg_tok_s": total / (last - t0),
        "steady_tok_s": steady,
        "ttft_p50_ms": 1e3 * percentile([ttft(r) for r in ok], 50),
        "ttft_max_ms": 1e3 * max(ttft(r) for r in ok),
        "itl_p50_ms": 1e3 * percentile(itl, 50) if itl else None,
        "itl_p90_ms": 1e3 * percentile(itl, 90) if itl else None,
    }


def streams(port: int, n: int, args, seed: int) -> dict:
    prompts = [prompt_ids(seed * 1000 + i, args.prompt_tokens) for i in range(n)]
    t0 = time.perf_counter()
    res = run_concurrently([lambda p=p: completion(port, p, args.gen_tokens, args.request_timeout) for p in prompts])
    return window_stats(res, t0)


def decode(port: int, args, seed: int) -> dict:
    rates, ttfts = [], []
    for rep in range(args.reps):
        r = completion(
            port,
            prompt_ids(seed * 100 + rep, args.prompt_tokens),
            args.gen_tokens,
            args.request_timeout,
        )
        span = r["t_last_delta"] - r["t_first_delta"]
        if r["output_tokens"] > 1 and span > 0:
            rates.append((r["output_tokens"] - 1) / span)
        ttfts.append(ttft(r))
    return {
        "decode_tok_s": statistics.median(rates) if rates else None,
        "decode_runs": rates,
        "ttft_p50_ms": 1e3 * statistics.median(ttfts),
    }


def prefill(port: int, args, seed: int) -> dict:
    rates = []
    for rep in range(args.reps):
        r = completion(
            port,
            prompt_ids(seed * 100 + 50 + rep, args.prefill_tokens),
            1,
            args.request_timeout,
        )
        # A token that makes no text yet (part of a character, an end token) sends no
        # delta: then the whole one-token request is the prefill.
        rates.append(args.prefill_tokens / (ttft(r) or r["t_end"] - r["t_sent"]))
    return {"prefill_tok_s": statistics.median(rates), "prefill_runs": rates}


def swarm(port: int, args, seed: int) -> dict:
    """S sessions at once, each T turns in sequence; sessions share the system prompt and tools."""
    k = args.swarm_scale
    ns = argparse.Namespace(
        seed=args.swarm_seed,
        system_chars=int(7000 * k),
        tools_chars=int(32000 * k),
        n_tools=12,
        reminder_chars=int(12000 * k),
        no_billing_line=False,
        result_chars=int(1500 * k),
    )
    shared = agent_replay.Shared(ns, run_id="")
    shared.billing_rng = random.Random(seed)

    def session(i: int):
        first = f"{syn.FIRST_PROMPTS[i % len(syn.FIRST_PROMPTS)]} (task {seed}-{i})"
        conv = agent_replay.Conversation(f"s{i}", shared, first, i % 3, seed * 100 + i)
        # The client's own time between turns (running the tools), the same on every side.
        tool_rng = random.Random(seed * 1000 + i)
        turns = []
        for turn in range(args.swarm_turns):
            if turn > 0 and args.swarm_tool_s > 0:
                time.sleep(tool_rng.uniform(0, 2 * args.swarm_tool_s))
            body = conv.body("bench", args.swarm_tokens)
            body["temperature"] = args.swarm_temperature
            r = send(port, "anthropic", body, args.request_timeout)
            turns.append(
                {
                    "ttft": ttft(r),
                    "out": r["output_tokens"],
                    "prompt": r["prompt_tokens"],
                    "cached": r["cached_tokens"],
                    "t_end": r["t_end"],
                }
            )
            conv.advance(r, "synthetic")
        return turns

    t0 = time.perf_counter()
    res = run_concurrently([lambda i=i: session(i) for i in range(args.swarm_sessions)])
    ok = [s for s in res if isinstance(s, list)]
    errors = [s["error"] for s in res if isinstance(s, dict)]
    if not ok:
        return {"errors": errors}
    turns = [t for s in ok for t in s]
    wall = max(t["t_end"] for t in turns) - t0
    later = [t["ttft"] for s in ok for t in s[1:] if t["ttft"] is not None]
    return {
        "sessions": len(res),
        "errors": errors,
        "turns": len(turns),
        "out_tokens": sum(t["out"] or 0 for t in turns),
        "wall_s": wall,
        "tool_s": args.swarm_tool_s,
        "temperature": args.swarm_temperature,
        "agg_tok_s": sum(t["out"] or 0 for t in turns) / wall,
        "turn_ttft_p50_ms": 1e3 * percentile([t["ttft"] for t in turns if t["ttft"] is not None], 50),
        "first_ttft_p50_ms": 1e3 * percentile([s[0]["ttft"] for s in ok if s[0]["ttft"] is not None], 50),
        "later_ttft_p50_ms": 1e3 * percentile(later, 50) if later else None,
        "prompt_tokens_p50": percentile([t["prompt"] or 0 for t in turns], 50),
        "cached_share": sum(t["cached"] or 0 for t in turns) / max(1, sum(t["prompt"] or 0 for t in turns)),
    }


def with_server(side: str, args, parallel: int, ctx: int, log_dir: Path, work) -> dict:
    port = free_port()
    env = None
    if side.startswith(PENSIEVE) and args.pensieve_log:
        env = dict(os.environ, PENSIEVE_LOG=args.pensieve_log)
    cmd = command(side, args, port, parallel, ctx)
    srv = Server(side, cmd, port, log_dir / f"{side}.log", env=env)
    with VramSampler() as vram:
        try:
            srv.start(args.health_timeout)
            # Warm-up: CUDA graphs, allocator pools and page cache, not measured.
            completion(port, prompt_ids(7, 64), 16, args.request_timeout)
            out = work(port)
        except (RuntimeError, StreamError, OSError) as e:
            out = {"errors": [str(e)[:2000]]}
        finally:
            srv.stop()
    out["vram_peak_mib"] = vram.peak
    return out


def llama_bench(args) -> dict:
    if not args.llama_bench_bin:
        return {}
    cmd = [
        args.llama_bench_bin,
        "-m",
        args.model,
        "-ngl",
        "999",
        "-p",
        "512",
        "-n",
        "128",
        "-o",
        "json",
    ]
    log("llama-bench: " + " ".join(cmd))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        rows = json.loads(out)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as e:
        return {"error": str(e)[:2000]}
    res = {}
    for r in rows:
        key = f"pp{r['n_prompt']}" if r.get("n_prompt") else f"tg{r['n_gen']}"
        res[key] = r.get("avg_ts")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pensieve-bin", required=True)
    ap.add_argument("--llama-server-bin", required=True)
    ap.add_argument("--llama-bench-bin")
    ap.add_argument("--sides", default=f"{PENSIEVE},{LLAMA},{LLAMA_BS}")
    ap.add_argument("--workloads", default="decode,prefill,streams,swarm")
    ap.add_argument("--streams", default="32,64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="requests per round of decode and prefill")
    ap.add_argument("--prompt-tokens", type=int, default=500)
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--prefill-tokens", type=int, default=4096)
    ap.add_argument("--swarm-sessions", type=int, default=16)
    ap.add_argument("--swarm-turns", type=int, default=4)
    ap.add_argument("--swarm-tokens", type=int, default=128, help="max_tokens of each swarm turn")
    ap.add_argument("--swarm-seed", type=int, default=7)
    ap.add_argument(
        "--swarm-temperature",
        type=float,
        default=0.0,
        help="temperature of the swarm's turns (Claude Code sends none: 1.0)",
    )
    ap.add_argument(
        "--swarm-tool-s",
        type=float,
        default=0.0,
        help="mean seconds a session spends running its tools between turns (uniform on "
        "0..2x, seeded; 0: the next turn at once, so that sessions keep in step)",
    )
    ap.add_argument(
        "--swarm-scale",
        type=float,
        default=1.0,
        help="scales the sessions' prompts (1: ~13k tokens)",
    )
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--pensieve-args", default="")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a Pensieve side `pensieve:NAME` run with FLAGS too (repeatable), e.g. "
        "--variant 'host=--backend-sampling false' --sides pensieve,pensieve:host",
    )
    ap.add_argument(
        "--pensieve-log",
        help="PENSIEVE_LOG for pensieve (e.g. info,pensieve_engine=trace: step times)",
    )
    ap.add_argument("--llama-args", default="")
    ap.add_argument("--health-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=900)
    ap.add_argument("--log-dir")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    install_signal_handlers()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pensieve-gpu-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    sides = args.sides.split(",")
    workloads = args.workloads.split(",")
    results: dict = {"args": vars(args), "llama_bench": llama_bench(args), "runs": []}
    log(f"llama-bench: {results['llama_bench']}")

    def save():
        Path(args.json).write_text(json.dumps(results, indent=1))

    plan = []  # (workload, streams, parallel, ctx-per-sequence)
    if "decode" in workloads or "prefill" in workloads:
        plan.append(("single", 1, 1, args.prefill_tokens + 1024))
    if "streams" in workloads:
        plan += [("streams", n, n, 2048) for n in (int(x) for x in args.streams.split(","))]
    if "swarm" in workloads:
        plan.append(("swarm", args.swarm_sessions, args.swarm_sessions, 24576))
    try:
        for rnd in range(args.rounds):
            for workload, n, parallel, ctx in plan:
                order = sides if rnd % 2 == 0 else sides[::-1]
                for side in order:
                    if workload == "swarm" and side == LLAMA_BS:
                        continue
                    seed = 1 + rnd

                    def work(port, workload=workload, n=n, seed=seed):
                        if workload == "single":
                            out = {}
                            if "decode" in workloads:
                                out.update(decode(port, args, seed))
                            if "prefill" in workloads:
                                out.update(prefill(port, args, seed))
                            return out
                        if workload == "streams":
                            return streams(port, n, args, seed)
                        return swarm(port, args, seed)

                    out = with_server(side, args, parallel, ctx, log_dir, work)
                    row = {
                        "round": rnd,
                        "workload": workload,
                        "n": n,
                        "side": side,
                        **out,
                    }
                    results["runs"].append(row)
                    save()
                    log(
                        json.dumps(
                            {
                                k: (round(v, 2) if isinstance(v, float) else v)
                                for k, v in row.items()
                                if not isinstance(v, list) or k == "errors"
                            }
                        )
                    )
    finally:
        kill_all()
        save()
    log(f"results in {args.json}, server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
