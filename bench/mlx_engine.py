#!/usr/bin/env python3
"""Pensieve's mlx engine vs mlx_lm.server: cold prefill and single-stream decode, same MLX folder.

Stdlib only (Python 3.11). `pensieve serve --engine mlx` runs mlx-lm in a Python worker and does
tokenisation, chat templates, scheduling and the prefix cache in Rust; mlx_lm.server does all of
it in Python. Both load the same MLX model folder with the same mlx / mlx-lm (the venv of
scripts/setup-mlx-peer.sh), so any difference is what each server adds around the model. Both are
driven over the same OpenAI client path (streaming `POST /v1/chat/completions`):

  cold prefill   a ~400-token prompt with a fresh random nonce at the start of the system prompt
                 and of the user message (no cache can serve it), max_tokens 1:
                 TTFT = request sent -> first content delta; prefill tok/s = prompt tokens / TTFT
  decode         a short prompt asking for a long story, temperature 0, max_tokens --decode-tokens:
                 decode tok/s = (content deltas - 1) / (last delta - first delta);
                 end-to-end = request sent -> end of stream (and content deltas / that)
  greedy text    the decode replies of the two servers are compared (same model, greedy: they
                 should agree; a mismatch is reported, not a failure)
  CPU            CPU seconds of each server's process group (pensieve + its worker) per decode
                 request, and how much of it was pensieve's own (Rust) process

Each round starts each server afresh (A B A B over --rounds), sends a warm-up request (not
measured), the cold-prefill request, then the decode request, and stops it. Medians [min-max] per
side and "pensieve vs mlx": the ratio of medians oriented so that above 1 means pensieve is
better (pensieve/mlx for tok/s, mlx/pensieve for times, CPU and RSS). Target: >= 0.95.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from client import StreamError, gaps, stream_chat, ttft
from common import (
    DEFAULT_MLX_VENV,
    DEFAULT_PENSIEVE_BIN,
    MLX,
    PENSIEVE,
    NoiseGauge,
    Server,
    add_run_options,
    binary_version,
    check_executable,
    cpu_model,
    fmt_stat,
    fnum,
    free_port,
    group_jiffies,
    group_peak_rss_kib,
    group_pids,
    install_signal_handlers,
    kill_all,
    log,
    nonce,
    pensieve_flags,
    percentile,
    proc_jiffies,
    server_env,
    set_log_tag,
    summarize,
    synthetic_text,
    wait_for_idle,
)

SIDES = (PENSIEVE, MLX)
LABEL = {PENSIEVE: "pensieve --engine mlx", MLX: "mlx_lm.server"}
DEFAULT_MLX_MODEL = "/root/.cache/pensieve/test-models/mlx/SmolLM2-135M-Instruct.Q4_1"
REPO = Path(__file__).resolve().parent.parent

DECODE_SYSTEM = "You are a helpful assistant."
DECODE_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a hidden cave under the "
    "rocks. Describe the lighthouse, the weather, the sea, the cave and what he finds there, "
    "step by step, in many paragraphs."
)


def default_pensieve_bin() -> str:
    """$CARGO_TARGET_DIR/release/pensieve when set, else this checkout's target/release/pensieve
    when it exists, else the shared default."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return DEFAULT_PENSIEVE_BIN
    local = REPO / "target" / "release" / "pensieve"
    return str(local) if local.is_file() else DEFAULT_PENSIEVE_BIN


def body(model: str, system: str, user: str, max_tokens: int) -> dict:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


def cpu_s(j: int) -> float:
    return j / os.sysconf("SC_CLK_TCK")


def strip_request(r: dict) -> dict:
    """What goes into the JSON of one request (no per-delta times)."""
    out = {k: v for k, v in r.items() if k not in ("delta_times", "content")}
    out["text"] = "".join(b.get("text", "") for b in r.get("content") or [] if b.get("type") == "text")
    return out


def run_round(srv: Server, args, model: str, prefill_text: str, n: str, t_launch: float) -> dict:
    res: dict = {"side": srv.side, "startup_s": srv.startup_s}
    pgid = srv.pid
    # warm-up: loads/faults the weights, first MLX evaluation; not measured
    stream_chat(srv.port, body(model, DECODE_SYSTEM, "Say hello.", 4), args.request_timeout)
    res["ready_s"] = time.perf_counter() - t_launch
    gauge = NoiseGauge(pgid, group=True)

    # cold prefill: the nonce `n` (new each round, the same for both servers of a round: the same
    # prompt, and each server is fresh) opens the system prompt, right after the template's first
    # tokens, and the user text, so nothing of it was seen before
    g0, m0 = group_jiffies(pgid), proc_jiffies(pgid)
    r = stream_chat(
        srv.port,
        body(
            model,
            f"[session {n}] You are a careful reader.",
            f"{n}\n\n{prefill_text}\n\nSummarize the text above in one sentence.",
            args.prefill_max_tokens,
        ),
        args.request_timeout,
    )
    g1, m1 = group_jiffies(pgid), proc_jiffies(pgid)
    t = ttft(r)
    p = r["prompt_tokens"]
    if t is None:
        log(f"warning: {srv.side} sent no content delta for the cold prompt: using the whole request")
        t = r["t_end"] - r["t_sent"]
    res.update(
        prefill_ttft_s=t,
        prefill_total_s=r["t_end"] - r["t_sent"],
        prefill_prompt_tokens=p,
        prefill_cached_tokens=r["cached_tokens"],
        prefill_tok_s=p / t if p and t else None,
        prefill_cpu_s=cpu_s(g1 - g0),
        prefill_main_cpu_s=cpu_s(m1 - m0),
    )
    if r["cached_tokens"] and p and r["cached_tokens"] > 0.02 * p:
        log(f"warning: {srv.side} served {r['cached_tokens']}/{p} tokens of the 'cold' prompt from cache")
    res["prefill_request"] = strip_request(r)

    # decode
    g0, m0 = group_jiffies(pgid), proc_jiffies(pgid)
    r = stream_chat(srv.port, body(model, DECODE_SYSTEM, DECODE_PROMPT, args.decode_tokens), args.request_timeout)
    g1, m1 = group_jiffies(pgid), proc_jiffies(pgid)
    nd = r["n_deltas"]
    span = (r["t_last_delta"] - r["t_first_delta"]) if nd >= 2 else None
    total = r["t_end"] - r["t_sent"]
    text = "".join(b.get("text", "") for b in r.get("content") or [] if b.get("type") == "text")
    g = gaps(r)
    res.update(
        decode_tok_s=(nd - 1) / span if span else None,
        decode_deltas=nd,
        decode_usage_tokens=r["output_tokens"],
        decode_ttft_s=ttft(r),
        decode_prompt_tokens=r["prompt_tokens"],
        decode_total_s=total,
        decode_e2e_tok_s=nd / total if total > 0 else None,
        decode_itl_p50_ms=1000 * percentile(g, 50) if g else None,
        decode_itl_p99_ms=1000 * percentile(g, 99) if g else None,
        decode_cpu_s=cpu_s(g1 - g0),
        decode_main_cpu_s=cpu_s(m1 - m0),
        decode_stop=r["stop_reason"],
        decode_text=text,
    )
    if nd < args.decode_tokens * 0.5:
        log(f"warning: {srv.side} decode stopped after {nd} deltas (finish_reason {r['stop_reason']})")
    if r["output_tokens"] and abs(r["output_tokens"] - nd) > 1:
        log(f"note: {srv.side} sent {nd} content deltas for {r['output_tokens']} completion tokens")
    res["decode_request"] = strip_request(r)
    res.update(gauge.stop())
    rss = group_peak_rss_kib(pgid)
    res["peak_rss_mib"] = rss / 1024 if rss else None
    res["processes"] = len(group_pids(pgid))
    return res


METRICS = [
    # key, label, format, higher_is_better (None: no ratio)
    ("prefill_prompt_tokens", "cold prompt tokens", "{:.0f}", None),
    ("prefill_ttft_s", "cold prefill TTFT (s)", "{:.2f}", False),
    ("prefill_tok_s", "cold prefill tok/s", "{:.2f}", True),
    ("prefill_total_s", "cold request, total (s)", "{:.2f}", False),
    ("decode_tok_s", "decode tok/s (first->last delta)", "{:.2f}", True),
    ("decode_itl_p50_ms", "decode ITL p50 (ms)", "{:.0f}", False),
    ("decode_itl_p99_ms", "decode ITL p99 (ms)", "{:.0f}", False),
    ("decode_ttft_s", "decode request TTFT (s)", "{:.2f}", False),
    ("decode_total_s", "decode request end-to-end (s)", "{:.2f}", False),
    ("decode_e2e_tok_s", "decode end-to-end tok/s", "{:.2f}", True),
    ("decode_deltas", "decode content deltas", "{:.0f}", None),
    ("decode_cpu_s", "CPU s, decode request (all procs)", "{:.2f}", False),
    ("decode_main_cpu_s", "  of which the main process", "{:.2f}", None),
    ("prefill_cpu_s", "CPU s, cold request (all procs)", "{:.2f}", False),
    ("peak_rss_mib", "peak RSS, sum of procs (MiB)", "{:.0f}", False),
    ("startup_s", "start -> /health 200 (s) [1]", "{:.2f}", False),
    ("ready_s", "start -> warm-up reply done (s)", "{:.2f}", False),
    ("other_cpu_pct", "other CPU while measuring %", "{:.0f}", None),
]


def ratio(summary: dict, key: str, higher: bool | None) -> float | None:
    a, b = summary[MLX].get(key), summary[PENSIEVE].get(key)
    if higher is None or not a or not b or not a["median"] or not b["median"]:
        return None
    return b["median"] / a["median"] if higher else a["median"] / b["median"]


def print_table(summary: dict, sides: list[str]) -> None:
    w0 = 34
    both = len(sides) == 2
    header = f"{'metric':<{w0}}" + "".join(f"{LABEL[s] + ' median [min-max]':>38}" for s in sides)
    if both:
        header += f"{'pensieve vs mlx':>17}"
    print(header)
    print("-" * len(header))
    for key, label, f, higher in METRICS:
        row = f"{label:<{w0}}"
        for s in sides:
            row += f"{fmt_stat(summary[s].get(key), f):>38}"
        if both:
            x = ratio(summary, key, higher)
            row += f"{(f'{x:.3f}x' if x else '-'):>17}"
        print(row)
    if both:
        print(
            "pensieve vs mlx: ratio of medians, above 1 = pensieve better (tok/s: pensieve/mlx; "
            "times, CPU, RSS: mlx/pensieve)"
        )
    print(
        "[1] mlx_lm.server answers /health while its generation thread still loads the model; "
        "the next row (a 4-token warm-up request done) is comparable"
    )
    for s in sides:
        for key, label, _, _ in METRICS:
            st = summary[s].get(key)
            if key in ("prefill_ttft_s", "decode_tok_s") and st and st["spread"] and st["spread"] > 0.15:
                print(f"note: {s} '{label}' spread > 15% of median: noisy machine, consider a rerun")
        o = summary[s].get("other_cpu_pct")
        if o and o["max"] > 10:
            print(f"note: other processes used up to {o['max']:.0f}% of the machine while {s} was measured")


def compare_texts(runs: dict, sides: list[str]) -> dict:
    """Greedy decode replies: per side whether its rounds agree, and whether the sides agree."""
    out: dict = {}
    firsts = {}
    for s in sides:
        texts = [r["decode_text"] for r in runs[s]]
        if not texts:
            continue
        firsts[s] = texts[0]
        out[s] = {"rounds_agree": all(t == texts[0] for t in texts), "head": texts[0][:160], "chars": len(texts[0])}
    if len(firsts) == 2:
        a, b = firsts[PENSIEVE], firsts[MLX]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        out["same"] = a == b
        out["common_prefix_chars"] = k
        # one side may stop a token earlier or later: compare the shorter text
        out["one_is_prefix_of_other"] = k == min(len(a), len(b))
    return out


def main() -> int:
    set_log_tag("mlx-engine")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--mlx-model",
        default=DEFAULT_MLX_MODEL,
        help=f"MLX model folder, loaded by both servers (default {DEFAULT_MLX_MODEL})",
    )
    ap.add_argument(
        "--mlx-venv",
        default=DEFAULT_MLX_VENV,
        help="venv with mlx and mlx-lm: its bin/mlx_lm.server is the peer and its bin/python "
        "runs pensieve's worker (default %(default)s)",
    )
    ap.add_argument("--python", help="python for pensieve's worker (default: <mlx-venv>/bin/python)")
    ap.add_argument("--pensieve-bin", default=default_pensieve_bin(), help="(default %(default)s)")
    ap.add_argument("--only", choices=SIDES, help="benchmark one side only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--prefill-words",
        type=int,
        default=300,
        help="words of synthetic text in the cold prompt (default 300: ~420 tokens with SmolLM2)",
    )
    ap.add_argument("--prefill-max-tokens", type=int, default=1)
    ap.add_argument("--decode-tokens", type=int, default=48, help="max_tokens of the decode request (default 48)")
    ap.add_argument("--pensieve-ctx", type=int, help="pensieve --ctx (default: not passed, the server's default)")
    ap.add_argument(
        "--pensieve-parallel", type=int, help="pensieve --parallel (default: not passed, the server's default)"
    )
    add_run_options(ap, health_timeout=300, request_timeout=1800, retry_noisy=1)
    ap.add_argument("--pensieve-args", default="", help="extra arguments for pensieve serve (one string)")
    ap.add_argument("--mlx-args", default="", help="extra arguments for mlx_lm.server (one string)")
    ap.add_argument("--log-dir", help="server logs (default: a new temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args()
    install_signal_handlers()

    mlx_model = os.path.abspath(args.mlx_model)
    if not os.path.isfile(os.path.join(mlx_model, "config.json")):
        ap.error(f"not an MLX model folder: {mlx_model} (python/pensieve_mlx/convert.py)")
    python = args.python or os.path.join(args.mlx_venv, "bin", "python")
    sides = [args.only] if args.only else list(SIDES)
    bins = {PENSIEVE: args.pensieve_bin, MLX: os.path.join(args.mlx_venv, "bin", "mlx_lm.server")}
    hints = {PENSIEVE: "cargo build --release", MLX: "scripts/setup-mlx-peer.sh"}
    for s in sides:
        err = check_executable(bins[s], hints[s])
        if err:
            ap.error(f"{s}: {err}")
    if PENSIEVE in sides:
        if "--engine" not in pensieve_flags(bins[PENSIEVE]):
            ap.error(f"{bins[PENSIEVE]} has no --engine flag (an old build?)")
        err = check_executable(python, "--python or --mlx-venv")
        if err:
            ap.error(f"worker python {err}")
    versions = {
        PENSIEVE: binary_version(bins[PENSIEVE]) if PENSIEVE in sides else None,
        MLX: os.path.basename(
            os.path.realpath(next(Path(args.mlx_venv).glob("lib/python*/site-packages/mlx_lm-*.dist-info"), Path("?")))
        ),
    }
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pensieve-mlx-engine-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="pensieve-mlx-engine-data-")
    prefill_text = synthetic_text(args.prefill_words)
    # mlx_lm.server loads the request's "model" from the hub unless it is "default_model";
    # pensieve serves any name
    req_model = "default_model"

    def command(side: str, port: int) -> list[str]:
        if side == PENSIEVE:
            cmd = [
                bins[PENSIEVE],
                "serve",
                "--engine",
                "mlx",
                "--model",
                mlx_model,
                "--python",
                python,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            if args.pensieve_ctx:
                cmd += ["--ctx", str(args.pensieve_ctx)]
            if args.pensieve_parallel:
                cmd += ["--parallel", str(args.pensieve_parallel)]
            return cmd + shlex.split(args.pensieve_args)
        return [
            bins[MLX],
            "--model",
            mlx_model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *shlex.split(args.mlx_args),
        ]

    env = server_env()
    env.pop("PENSIEVE_MLX_PYTHON", None)  # --python is on the command line
    env["PENSIEVE_DATA_DIR"] = data_dir  # nothing of an earlier run (or the user's) is read
    runs: dict = {s: [] for s in sides}
    discarded, failures = [], []
    interrupted = False
    started = time.time()
    try:
        for rnd in range(args.rounds):
            round_nonce = nonce()
            for s in sides:
                for attempt in range(args.retry_noisy + 1):
                    busy = wait_for_idle(args.wait_idle, args.idle_threshold / 100)
                    port = free_port()
                    srv = Server(s, command(s, port), port, log_dir / f"{s}.log", env=env)
                    try:
                        t_launch = time.perf_counter()
                        srv.start(args.health_timeout)
                        r = run_round(srv, args, req_model, prefill_text, round_nonce, t_launch)
                    except (RuntimeError, OSError, ValueError, StreamError) as e:
                        failures.append({"side": s, "round": rnd + 1, "error": str(e)})
                        log(f"round {rnd + 1} {s} FAILED: {e}\n--- server log tail:\n{srv.log_tail()}")
                        if sum(1 for f in failures if f["side"] == s) >= 3:
                            raise RuntimeError(f"{s} failed three times; giving up") from e
                        break
                    finally:
                        srv.stop()
                    r.update(round=rnd + 1, attempt=attempt + 1, busy_before_pct=None if busy is None else 100 * busy)
                    log(
                        f"round {rnd + 1}/{args.rounds} {s}: cold prefill {r['prefill_prompt_tokens']} tok, "
                        f"TTFT {fnum(r['prefill_ttft_s'], 2)} s ({fnum(r['prefill_tok_s'], 2)} tok/s); decode "
                        f"{fnum(r['decode_tok_s'], 2)} tok/s ({r['decode_deltas']} deltas, e2e "
                        f"{fnum(r['decode_total_s'], 2)} s); CPU {fnum(r['decode_cpu_s'], 2)} s "
                        f"(main {fnum(r['decode_main_cpu_s'], 2)}); other CPU {fnum(r.get('other_cpu_pct'), 0)}%"
                    )
                    log(f"  text: {r['decode_text'][:100]!r}")
                    if (r.get("other_cpu_pct") or 0) > args.max_other_cpu and attempt < args.retry_noisy:
                        log(f"other processes took {r['other_cpu_pct']:.0f}% of the machine: redoing")
                        discarded.append(r)
                        continue
                    runs[s].append(r)
                    break
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): servers stopped; summarizing what was measured")
    except RuntimeError as e:
        interrupted = True
        log(f"stopped: {e}; summarizing what was measured")
    finally:
        kill_all()
        shutil.rmtree(data_dir, ignore_errors=True)

    summary = {s: {k: summarize([r.get(k) for r in runs[s]]) for k, *_ in METRICS} for s in sides}
    texts = compare_texts(runs, sides)
    print()
    print(
        f"model: {mlx_model}, rounds {args.rounds}{' (interrupted)' if interrupted else ''}"
        f"{f', {len(discarded)} noisy round(s) redone' if discarded else ''}; OpenAI streaming API, "
        f"temperature 0; cold prompt {args.prefill_words} words + nonce, max_tokens {args.prefill_max_tokens}; "
        f"decode max_tokens {args.decode_tokens}"
    )
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    for s in sides:
        print(f"{LABEL[s]}: {' '.join(command(s, 0))}")
        print(f"  version: {'; '.join((versions[s] or '?').splitlines())}")
    print()
    if any(runs[s] for s in sides):
        print_table(summary, sides)
        print()
        for s in sides:
            if s in texts:
                t = texts[s]
                print(
                    f"greedy text, {LABEL[s]} ({t['chars']} chars"
                    f"{'' if t['rounds_agree'] else ', DIFFERS between rounds'}): {t['head']!r}"
                )
        if len(sides) == 2:
            for rp, rm in zip(runs[PENSIEVE], runs[MLX]):
                if rp["prefill_prompt_tokens"] != rm["prefill_prompt_tokens"]:
                    print(
                        f"note: round {rp['round']}: the cold prompt is {rp['prefill_prompt_tokens']} tokens "
                        f"on pensieve, {rm['prefill_prompt_tokens']} on mlx_lm.server"
                    )
                if rp["decode_prompt_tokens"] != rm["decode_prompt_tokens"]:
                    print(
                        f"note: round {rp['round']}: the decode prompt is {rp['decode_prompt_tokens']} tokens "
                        f"on pensieve, {rm['decode_prompt_tokens']} on mlx_lm.server"
                    )
        if "same" in texts:
            if texts["same"]:
                print("greedy text: identical on both servers")
            else:
                print(
                    f"greedy text: DIFFERENT (common prefix {texts['common_prefix_chars']} chars"
                    f"{', one is a prefix of the other' if texts['one_is_prefix_of_other'] else ''})"
                )
    print(f"server logs: {log_dir}")
    if args.json:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "interrupted": interrupted,
            "mlx_model": mlx_model,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "args": vars(args),
            "versions": versions,
            "commands": {s: command(s, 0) for s in sides},
            "summary": summary,
            "ratios_pensieve_vs_mlx": (
                {k: ratio(summary, k, h) for k, _, _, h in METRICS if h is not None} if len(sides) == 2 else None
            ),
            "greedy_text": texts,
            "runs": runs,
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


if __name__ == "__main__":
    sys.exit(main())
