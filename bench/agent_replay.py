#!/usr/bin/env python3
"""Agent-session replay shaped like Claude Code: per-request TTFT and prompt-cache share.

Stdlib only (Python 3.11). Each server (Pensieve, llama-server, optionally mlx_lm.server) is
started by this script, one at a time, and replays the same deterministic session:

  A1      conversation A's first request: system prompt (billing line + identity + ~7k chars),
          12 tool schemas (~30k chars of JSON), a user message of two <system-reminder> blocks
          and a task; ~13k tokens with Qwen2.5-Coder-0.5B
  A2..AT  each appends the assistant's previous reply (the content the server actually returned,
          plus a tool_use block when it returned none) and a user message with the tool_result
          (a file read or grep output) and a short text
  B1..    conversation B (a subagent): same system prompt and tools, another first message,
          interleaved after every other turn of A
  S1..    side requests: short, no tools, another system prompt ("a 5-word title for ...")
  restart (--restart) stop the server, start it again with the same flags (pensieve keeps its
          --cache-dir), send A's next turn (R-A) and a new session's first request (R-N)

Per request: TTFT (sent -> first content delta), prompt tokens and cached tokens as the server
reports them (Anthropic: cache_read_input_tokens; OpenAI: usage.prompt_tokens_details.cached_tokens
or llama-server's timings.cache_n), cached share = cached / prompt. Summary: cold TTFT (A1), the
worst and median TTFT of A's turns >= 2 as a fraction of A1's, their median cached share, and
after a restart the TTFT of R-A and R-N as a fraction of A1's. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import synthetic as syn
from client import StreamError, send, ttft
from common import (
    ALL_SIDES,
    DEFAULT_LLAMA_BIN,
    DEFAULT_MLX_VENV,
    DEFAULT_PENSIEVE_BIN,
    LLAMA,
    MLX,
    PENSIEVE,
    QWEN,
    NoiseGauge,
    Server,
    binary_version,
    check_executable,
    check_llama_slots,
    cpu_model,
    fmt_stat,
    fnum,
    free_port,
    group_peak_rss_kib,
    install_signal_handlers,
    kill_all,
    llama_command,
    log,
    mlx_command,
    nonce,
    pensieve_command,
    pensieve_flags,
    server_env,
    set_log_tag,
    summarize,
    wait_for_idle,
)

SIDE_PROMPTS = ["Write a 5-word title for this conversation: ", "Summarize in one line what the user asked: "]


class Shared:
    """The pieces every conversation of one run shares (same bytes for every server)."""

    def __init__(self, args, run_id: str):
        rng = random.Random(args.seed)
        self.identity = "You are Claude Code, a command line coding agent." + (f" Session {run_id}." if run_id else "")
        self.system_text = syn.system_prompt_text(rng, args.system_chars)
        self.tools = syn.tools(rng, args.tools_chars, args.n_tools) if args.n_tools else []
        self.reminders = [syn.reminders(random.Random(args.seed + 10 + i), args.reminder_chars) for i in range(3)]
        self.args = args
        self.billing_rng = random.Random(args.seed + 1)

    def system(self) -> list[dict]:
        blocks = []
        if not self.args.no_billing_line:
            blocks.append({"type": "text", "text": syn.billing_line(self.billing_rng)})
        blocks.append({"type": "text", "text": self.identity, "cache_control": {"type": "ephemeral"}})
        blocks.append({"type": "text", "text": self.system_text, "cache_control": {"type": "ephemeral"}})
        return blocks


class Conversation:
    def __init__(self, name: str, shared: Shared, first_prompt: str, idx: int, seed: int):
        self.name = name
        self.shared = shared
        self.turn = 1
        self.rng = random.Random(seed)
        self.messages = [{"role": "user", "content": [*shared.reminders[idx], {"type": "text", "text": first_prompt}]}]

    def body(self, model: str, max_tokens: int) -> dict:
        msgs = json.loads(json.dumps(self.messages))
        last = msgs[-1]["content"][-1]
        last["cache_control"] = {"type": "ephemeral"}  # Claude Code marks the newest block
        b = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "system": self.shared.system(),
            "messages": msgs,
        }
        if self.shared.tools:
            b["tools"] = self.shared.tools
        return b

    def advance(self, result: dict, mode: str) -> str:
        """Append the assistant's reply and the next user message (tool results + short text)."""
        rng = self.rng
        content, how = [], "synthetic"
        if mode == "actual":
            for blk in result.get("content") or []:
                if blk.get("type") == "text" and blk["text"].strip():
                    content.append({"type": "text", "text": blk["text"]})
                elif blk.get("type") == "tool_use" and "input_invalid" not in blk and blk.get("id"):
                    content.append(
                        {"type": "tool_use", "id": blk["id"], "name": blk["name"], "input": blk.get("input") or {}}
                    )
            how = "actual" if content else "synthetic"
        else:
            content.append({"type": "text", "text": f"I'll look at {syn.path(rng)} next."})
        uses = [b for b in content if b["type"] == "tool_use"]
        if not uses:
            name = rng.choice(("Read", "Grep", "Bash", "Read"))
            uses = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{self.name}{self.turn:02d}",
                    "name": name,
                    "input": syn.tool_input(rng, name),
                }
            ]
            content += uses
            how += "+tool_use" if how == "actual" else ""
        self.messages.append({"role": "assistant", "content": content})
        results = [
            {
                "type": "tool_result",
                "tool_use_id": u["id"],
                "content": syn.tool_result_text(rng, self.shared.args.result_chars // len(uses)),
            }
            for u in uses
        ]
        self.messages.append(
            {"role": "user", "content": results + [{"type": "text", "text": rng.choice(syn.FOLLOW_UPS)}]}
        )
        self.turn += 1
        return how


def side_body(shared: Shared, model: str, max_tokens: int, i: int) -> dict:
    first = shared.reminders[0][-1]["text"][-300:]
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "system": [{"type": "text", "text": "You write short titles and summaries."}],
        "messages": [{"role": "user", "content": SIDE_PROMPTS[i % 2] + syn.FIRST_PROMPTS[0] + " " + first}],
    }


def schedule(turns: int, b_turns: int, side: bool) -> list[str]:
    """A1 S1 B1 A2 A3 B2 A4 S2 A5 B3 ... : B after every odd turn of A, a side request after A1
    and after every 4th turn."""
    out, b, s = [], 0, 0
    for t in range(1, turns + 1):
        out.append(f"A{t}")
        if side and (t == 1 or t % 4 == 0):
            s += 1
            out.append(f"S{s}")
        if t % 2 == 1 and b < b_turns:
            b += 1
            out.append(f"B{b}")
    return out


def record(label: str, r: dict, how: str | None) -> dict:
    t = ttft(r)
    p, c = r["prompt_tokens"], r["cached_tokens"]
    share = (c or 0) / p if p else None
    uncached = (p - (c or 0)) if p else None
    rec = {
        "label": label,
        "ttft_s": t,
        "prompt_tokens": p,
        "cached_tokens": c,
        "cached_share": share,
        "uncached_prefill_tok_s": uncached / t if uncached and t else None,
        "output_tokens": r["output_tokens"],
        "stop_reason": r["stop_reason"],
        "total_s": r["t_end"] - r["t_sent"],
        "reply": how,
        "usage": r["usage"],
        "content_types": [b.get("type") for b in r.get("content") or []],
        "text_head": r["text_head"],
        "notes": r["notes"],
    }
    log(
        f"  {label:<5} TTFT {fnum(t, 2):>7} s  prompt {p} tok, cached {c} ({fnum(100 * share if share is not None else None, 0)}%), "
        f"out {r['output_tokens']} ({r['stop_reason']}){'  ' + '; '.join(r['notes']) if r['notes'] else ''}"
    )
    return rec


def run_session(start, api: str, args, model: str, restart: bool, group: bool = False) -> dict:
    """One replay on one server. `start()` returns a started Server (called again to restart).
    `group`: the server runs worker processes (pensieve --engine mlx): CPU and peak RSS are those
    of its whole process group."""
    run_id = nonce() if args.nonce else ""
    shared = Shared(args, run_id)
    convs = {
        "A": Conversation("A", shared, syn.FIRST_PROMPTS[0], 0, args.seed + 100),
        "B": Conversation("B", shared, syn.FIRST_PROMPTS[1], 1, args.seed + 200),
    }
    srv = start()
    out: dict = {"startup_s": srv.startup_s, "requests": []}
    if srv.side == LLAMA:
        out["llama_slots"] = check_llama_slots(srv)
    send(
        srv.port,
        api,
        {"model": model, "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "Hi."}]},
        args.request_timeout,
    )  # warm-up
    gauge = NoiseGauge(srv.pid, group=group)
    t0 = time.perf_counter()
    pending: dict[str, dict] = {}
    side_i = 0
    for label in schedule(args.turns, args.b_turns, not args.no_side):
        kind = label[0]
        if kind == "S":
            r = send(srv.port, api, side_body(shared, model, args.max_tokens, side_i), args.request_timeout)
            side_i += 1
            out["requests"].append(record(label, r, None))
            continue
        conv = convs[kind]
        how = conv.advance(pending.pop(kind), args.assistant) if kind in pending else None
        r = send(srv.port, api, conv.body(model, args.max_tokens), args.request_timeout)
        pending[kind] = r
        out["requests"].append(record(label, r, how))
    out["session_s"] = time.perf_counter() - t0
    out.update(gauge.stop())
    rss = group_peak_rss_kib(srv.pid) if group else srv.peak_rss_kib()
    out["peak_rss_mib"] = rss / 1024 if rss else None
    if restart:
        log(f"restart: stopping {srv.side} and starting it again with the same flags")
        srv.stop()
        srv = start()
        out["restart_startup_s"] = srv.startup_s
        a = convs["A"]
        how = a.advance(pending.pop("A"), args.assistant)
        r = send(srv.port, api, a.body(model, args.max_tokens), args.request_timeout)
        out["requests"].append(record(f"R-A{a.turn}", r, how))
        n = Conversation("N", shared, syn.FIRST_PROMPTS[2], 2, args.seed + 300)
        r = send(srv.port, api, n.body(model, args.max_tokens), args.request_timeout)
        out["requests"].append(record("R-N1", r, None))
    srv.stop()
    return out


def session_metrics(sess: dict) -> dict:
    by = {q["label"]: q for q in sess["requests"]}
    a1 = by.get("A1") or {}
    cold = a1.get("ttft_s")
    warm = [q for q in sess["requests"] if q["label"].startswith("A") and q["label"] != "A1"]
    warm_t = [q["ttft_s"] for q in warm if q["ttft_s"] is not None]
    shares = [q["cached_share"] for q in warm if q["cached_share"] is not None]
    b = [q for q in sess["requests"] if q["label"].startswith("B")]
    sides = [q["ttft_s"] for q in sess["requests"] if q["label"].startswith("S") and q["ttft_s"]]
    ra = next((q for q in sess["requests"] if q["label"].startswith("R-A")), None)
    rn = by.get("R-N1")
    ratio = lambda q: q["ttft_s"] / cold if q and cold and q.get("ttft_s") else None  # noqa: E731
    return {
        "cold_ttft_s": cold,
        "cold_prompt_tokens": a1.get("prompt_tokens"),
        "cold_prefill_tok_s": a1["prompt_tokens"] / cold if cold and a1.get("prompt_tokens") else None,
        "warm_worst_ttft_s": max(warm_t) if warm_t else None,
        "warm_worst_over_cold": max(warm_t) / cold if warm_t and cold else None,
        "warm_median_over_cold": statistics.median(warm_t) / cold if warm_t and cold else None,
        "a_cached_share_median": statistics.median(shares) if shares else None,
        "b1_cached_share": b[0]["cached_share"] if b else None,
        "b1_over_cold": ratio(b[0]) if b else None,
        "side_ttft_median_s": statistics.median(sides) if sides else None,
        "restart_next_turn_over_cold": ratio(ra),
        "restart_next_turn_cached_share": ra["cached_share"] if ra else None,
        "restart_new_session_over_cold": ratio(rn),
        "restart_new_session_cached_share": rn["cached_share"] if rn else None,
        "session_s": sess.get("session_s"),
        "peak_rss_mib": sess.get("peak_rss_mib"),
        "other_cpu_pct": sess.get("other_cpu_pct"),
    }


SUMMARY = [
    ("cold_prompt_tokens", "A1 prompt tokens", "{:.0f}"),
    ("cold_ttft_s", "A1 TTFT, cold (s)", "{:.2f}"),
    ("cold_prefill_tok_s", "A1 prefill tok/s", "{:.1f}"),
    ("warm_worst_ttft_s", "worst TTFT, A turns >= 2 (s)", "{:.2f}"),
    ("warm_worst_over_cold", "  worst / cold", "{:.3f}"),
    ("warm_median_over_cold", "  median / cold", "{:.3f}"),
    ("a_cached_share_median", "cached share, A turns >= 2", "{:.3f}"),
    ("b1_cached_share", "cached share, B1 (subagent)", "{:.3f}"),
    ("b1_over_cold", "B1 TTFT / cold", "{:.3f}"),
    ("side_ttft_median_s", "side request TTFT median (s)", "{:.2f}"),
    ("restart_next_turn_over_cold", "restart: next A turn TTFT / cold", "{:.3f}"),
    ("restart_next_turn_cached_share", "restart: next A turn cached", "{:.3f}"),
    ("restart_new_session_over_cold", "restart: new session TTFT / cold", "{:.3f}"),
    ("restart_new_session_cached_share", "restart: new session cached", "{:.3f}"),
    ("session_s", "session wall time (s)", "{:.1f}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
    ("other_cpu_pct", "other CPU while measuring %", "{:.0f}"),
]


def print_requests(runs: dict, sides: list[str]) -> None:
    labels: list[str] = []
    for s in sides:
        for sess in runs[s]:
            for q in sess["requests"]:
                if q["label"] not in labels:
                    labels.append(q["label"])
    head = f"{'request':<8}" + "".join(f"{s + ': TTFT s / prompt / cached':>40}" for s in sides)
    print(head)
    print("-" * len(head))
    for lab in labels:
        row = f"{lab:<8}"
        for s in sides:
            qs = [q for sess in runs[s] for q in sess["requests"] if q["label"] == lab]
            t = [q["ttft_s"] for q in qs if q["ttft_s"] is not None]
            p = [q["prompt_tokens"] for q in qs if q["prompt_tokens"]]
            c = [q["cached_share"] for q in qs if q["cached_share"] is not None]
            cell = (
                f"{fnum(statistics.median(t), 2) if t else '-':>9} / "
                f"{(str(int(statistics.median(p))) if p else '-'):>6} / "
                f"{(f'{100 * statistics.median(c):.0f}%' if c else '-'):>5}"
            )
            row += f"{cell:>40}"
        print(row)


def print_summary(summary: dict, sides: list[str]) -> None:
    head = f"{'metric':<34}" + "".join(f"{s + ' median [min-max]':>30}" for s in sides)
    both = LLAMA in sides and PENSIEVE in sides
    with_mlx = MLX in sides and PENSIEVE in sides
    if both:
        head += f"{'pensieve/llama':>16}"
    if with_mlx:
        head += f"{'pensieve/mlx':>16}"
    print(head)
    print("-" * len(head))
    for key, label, f in SUMMARY:
        row = f"{label:<34}"
        for s in sides:
            row += f"{fmt_stat(summary[s].get(key), f):>30}"
        if both:
            a, b = summary[LLAMA].get(key), summary[PENSIEVE].get(key)
            ok = a and b and a["median"] and key not in ("other_cpu_pct", "cold_prompt_tokens")
            row += f"{(format(b['median'] / a['median'], '.2f') + 'x' if ok else '-'):>16}"
        if with_mlx:
            a, b = summary[MLX].get(key), summary[PENSIEVE].get(key)
            ok = a and b and a["median"] and key not in ("other_cpu_pct", "cold_prompt_tokens")
            row += f"{(format(b['median'] / a['median'], '.2f') + 'x' if ok else '-'):>16}"
        print(row)


def main() -> int:
    set_log_tag("replay")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=QWEN, help="GGUF file (default: the cached Qwen2.5-Coder-0.5B-Instruct)")
    ap.add_argument(
        "--peers",
        default=f"{LLAMA},{PENSIEVE}",
        help=f"comma-separated servers to run, of {','.join(ALL_SIDES)} (default llama-server,pensieve)",
    )
    ap.add_argument("--pensieve-bin", default=DEFAULT_PENSIEVE_BIN)
    ap.add_argument(
        "--pensieve-engine",
        choices=["llama", "mlx"],
        default="llama",
        help="llama (default): pensieve serves the GGUF --model; mlx: pensieve gets --engine mlx "
        "--model <--mlx-model folder> --python <--pensieve-python>, the same folder as "
        "mlx_lm.server (PENSIEVE_DATA_DIR is then a temp dir)",
    )
    ap.add_argument("--pensieve-python", help="python of pensieve's mlx worker (default: <--mlx-venv>/bin/python)")
    ap.add_argument(
        "--pensieve-api",
        choices=["anthropic", "openai"],
        default="anthropic",
        help="pensieve endpoint: /v1/messages (default) or /v1/chat/completions with the same "
        "translation mlx_lm.server gets",
    )
    ap.add_argument("--llama-server-bin", default=os.environ.get("LLAMA_SERVER_BIN", DEFAULT_LLAMA_BIN))
    ap.add_argument(
        "--llama-api",
        choices=["anthropic", "openai"],
        default="anthropic",
        help="llama-server endpoint: /v1/messages (default) or /v1/chat/completions",
    )
    ap.add_argument("--mlx-venv", default=DEFAULT_MLX_VENV, help="venv of scripts/setup-mlx-peer.sh")
    ap.add_argument("--mlx-model", help="MLX model folder (default: <peers>/mlx-models/<gguf name>-float32)")
    ap.add_argument("--rounds", type=int, default=1, help="sessions per server, alternating A B A B (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=32768, help="context per sequence (default 32768)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="sequences: llama-server -np N -c N*ctx; pensieve --parallel N when N > 1 (default 1)",
    )
    ap.add_argument(
        "--pensieve-cache-dir",
        default="auto",
        help="pensieve --cache-dir: 'auto' = a fresh temp dir per session when the binary has the "
        "flag (removed afterwards), 'none', or a path (default auto)",
    )
    ap.add_argument("--pensieve-cache-ram", help="pensieve --cache-ram value (default: not passed)")
    ap.add_argument("--turns", type=int, default=8, help="turns of conversation A (default 8)")
    ap.add_argument("--b-turns", type=int, help="turns of conversation B (default: turns / 2)")
    ap.add_argument("--no-side", action="store_true", help="no side requests")
    ap.add_argument(
        "--restart",
        action="store_true",
        help="after the session restart the server and send A's next turn and a new session",
    )
    ap.add_argument(
        "--assistant",
        choices=["actual", "synthetic"],
        default="actual",
        help="history replies: what the server returned (as Claude Code does) or fixed text; "
        "a tool_use block is added when the reply has none",
    )
    ap.add_argument("--system-chars", type=int, default=7000, help="long system prompt block (default 7000)")
    ap.add_argument("--tools-chars", type=int, default=32000, help="JSON size of all tool schemas (default 32000)")
    ap.add_argument("--n-tools", type=int, default=12)
    ap.add_argument(
        "--reminder-chars",
        type=int,
        default=12000,
        help="<system-reminder> blocks of each first user message (default 12000)",
    )
    ap.add_argument("--result-chars", type=int, default=1500, help="tool result size per turn (default 1500)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    ap.add_argument("--no-billing-line", action="store_true", help="leave out Claude Code's billing line")
    ap.add_argument(
        "--no-nonce",
        dest="nonce",
        action="store_false",
        help="no per-session random id in the identity line (it keeps earlier runs' caches out)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--health-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=3600)
    ap.add_argument("--wait-idle", type=float, default=120, metavar="S")
    ap.add_argument("--idle-threshold", type=float, default=15, metavar="PCT")
    ap.add_argument("--llama-args", default="")
    ap.add_argument("--pensieve-args", default="")
    ap.add_argument("--mlx-args", default="")
    ap.add_argument("--log-dir")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.b_turns is None:
        args.b_turns = args.turns // 2
    install_signal_handlers()

    model = os.path.abspath(args.model)
    model_name = Path(model).stem
    sides = [s.strip() for s in args.peers.split(",") if s.strip()]
    for s in sides:
        if s not in ALL_SIDES:
            ap.error(f"unknown peer {s!r}")
    pensieve_mlx = PENSIEVE in sides and args.pensieve_engine == "mlx"
    if not os.path.isfile(model) and (LLAMA in sides or (PENSIEVE in sides and not pensieve_mlx)):
        ap.error(f"model not found: {model}")
    bins = {
        LLAMA: args.llama_server_bin,
        PENSIEVE: args.pensieve_bin,
        MLX: os.path.join(args.mlx_venv, "bin", "mlx_lm.server"),
    }
    mlx_model = args.mlx_model or os.path.join(os.path.dirname(args.mlx_venv), "mlx-models", f"{model_name}-float32")
    hints = {
        LLAMA: "scripts/build-llama-server.sh",
        PENSIEVE: "cargo build --release",
        MLX: "scripts/setup-mlx-peer.sh",
    }
    for s in sides:
        err = check_executable(bins[s], hints[s])
        if err:
            ap.error(f"{s}: {err}")
    if (MLX in sides or pensieve_mlx) and not os.path.isfile(os.path.join(mlx_model, "config.json")):
        ap.error(f"mlx model folder not found: {mlx_model} (scripts/setup-mlx-peer.sh)")
    pensieve_python = args.pensieve_python or os.path.join(args.mlx_venv, "bin", "python")
    if pensieve_mlx:
        err = check_executable(pensieve_python, "--pensieve-python or --mlx-venv")
        if err:
            ap.error(f"pensieve worker python {err}")
    versions = {s: binary_version(bins[s]) for s in sides if s != MLX}
    p_flags = pensieve_flags(bins[PENSIEVE]) if PENSIEVE in sides else set()
    if args.parallel > 1 and PENSIEVE in sides and "--parallel" not in p_flags:
        log("warning: this pensieve binary has no --parallel: it serves one sequence at a time")
    use_cache_dir = (
        PENSIEVE in sides
        and args.pensieve_cache_dir != "none"
        and (args.pensieve_cache_dir != "auto" or "--cache-dir" in p_flags)
    )
    if PENSIEVE in sides and args.pensieve_cache_dir == "auto" and not use_cache_dir:
        log("note: this pensieve binary has no --cache-dir: its restart phase starts from an empty cache")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pensieve-replay-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = server_env()
    pensieve_env = env
    pensieve_data_dir = None
    if pensieve_mlx:
        if "--engine" not in p_flags:
            ap.error(f"{bins[PENSIEVE]} has no --engine flag (an old build?)")
        pensieve_data_dir = tempfile.mkdtemp(prefix="pensieve-replay-data-")
        pensieve_env = dict(env, PENSIEVE_DATA_DIR=pensieve_data_dir)
    apis = {LLAMA: args.llama_api, PENSIEVE: args.pensieve_api, MLX: "openai"}

    def command(side: str, port: int, cache_dir: str | None) -> list[str]:
        if side == LLAMA:
            return llama_command(
                bins[LLAMA], model, port, args.threads, args.parallel, args.ctx, shlex.split(args.llama_args)
            )
        if side == PENSIEVE:
            engine = ["--engine", "mlx", "--python", pensieve_python] if pensieve_mlx else []
            return pensieve_command(
                bins[PENSIEVE],
                mlx_model if pensieve_mlx else model,
                port,
                args.threads,
                args.ctx,
                engine + shlex.split(args.pensieve_args),
                parallel=args.parallel if args.parallel > 1 else None,
                cache_dir=cache_dir,
                cache_ram=args.pensieve_cache_ram,
            )
        return mlx_command(args.mlx_venv, mlx_model, port, shlex.split(args.mlx_args))

    runs: dict[str, list[dict]] = {s: [] for s in sides}
    failures: list[dict] = []
    commands: dict[str, list[str]] = {}
    interrupted = False
    started = time.time()
    try:
        for rnd in range(args.rounds):
            for s in sides:
                tmp_cache = None
                cache_dir = None
                if s == PENSIEVE and use_cache_dir:
                    if args.pensieve_cache_dir == "auto":
                        tmp_cache = cache_dir = tempfile.mkdtemp(prefix="pensieve-replay-cache-")
                    else:
                        cache_dir = args.pensieve_cache_dir
                        if os.path.isdir(cache_dir) and os.listdir(cache_dir):
                            log(
                                f"warning: --pensieve-cache-dir {cache_dir} is not empty (the nonce keeps "
                                f"A1 cold unless --no-nonce)"
                            )

                def start(s=s, cache_dir=cache_dir) -> Server:
                    wait_for_idle(args.wait_idle, args.idle_threshold / 100)
                    port = free_port()
                    cmd = command(s, port, cache_dir)
                    commands[s] = cmd
                    srv = Server(s, cmd, port, log_dir / f"{s}.log", env=pensieve_env if s == PENSIEVE else env)
                    srv.start(args.health_timeout)
                    return srv

                log(f"round {rnd + 1}/{args.rounds}: {s} ({apis[s]} API)")
                try:
                    # mlx_lm.server loads the request's "model" from the hub unless it is "default_model"
                    sess = run_session(
                        start,
                        apis[s],
                        args,
                        "default_model" if s == MLX else model_name,
                        args.restart,
                        group=s == PENSIEVE and pensieve_mlx,
                    )
                    sess["round"] = rnd + 1
                    sess["metrics"] = session_metrics(sess)
                    runs[s].append(sess)
                except (RuntimeError, OSError, ValueError, KeyError, StreamError) as e:
                    failures.append({"side": s, "round": rnd + 1, "error": str(e)})
                    log(f"round {rnd + 1} {s} FAILED: {e}")
                    kill_all()
                finally:
                    kill_all()
                    if tmp_cache:
                        shutil.rmtree(tmp_cache, ignore_errors=True)
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): servers stopped; summarizing what was measured")
    finally:
        kill_all()
        if pensieve_data_dir:
            shutil.rmtree(pensieve_data_dir, ignore_errors=True)

    summary = {s: {k: summarize([sess["metrics"].get(k) for sess in runs[s]]) for k, *_ in SUMMARY} for s in sides}
    print()
    if pensieve_mlx or MLX in sides:
        print(f"mlx model folder: {mlx_model}{' (pensieve --engine mlx and mlx_lm.server)' if pensieve_mlx else ''}")
    print(
        f"model: {model}, threads {args.threads}, ctx per sequence {args.ctx}, parallel {args.parallel}, "
        f"max_tokens {args.max_tokens}, turns A {args.turns} / B {args.b_turns}, rounds {args.rounds}"
        f"{', restart phase' if args.restart else ''}{' (interrupted)' if interrupted else ''}"
    )
    print(
        f"synthetic sizes (chars): system {args.system_chars}, tools {args.tools_chars} ({args.n_tools} tools), "
        f"reminders {args.reminder_chars}, tool result {args.result_chars}; replies: {args.assistant}"
    )
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    for s in sides:
        print(f"{s} ({apis[s]} API): {' '.join(commands.get(s, []))}")
        if s in versions:
            print(f"  version: {'; '.join(versions[s].splitlines())}")
        slots = [sess.get("llama_slots") for sess in runs[s] if sess.get("llama_slots")]
        if slots:
            print(f"  slots as logged: {slots[0]}")
    print()
    if any(runs[s] for s in sides):
        print_requests(runs, sides)
        print()
        print_summary(summary, sides)
    print(f"server logs: {log_dir}")
    if args.json:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "interrupted": interrupted,
            "model": model,
            "mlx_model": mlx_model if MLX in sides or pensieve_mlx else None,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "args": vars(args),
            "versions": versions,
            "apis": {s: apis[s] for s in sides},
            "commands": commands,
            "summary": summary,
            "runs": runs,
            "failures": failures,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"json: {args.json}")
    if failures:
        print(
            f"{len(failures)} session(s) failed: "
            + "; ".join(f"{f['side']} round {f['round']}: {f['error'][:300]}" for f in failures)
        )
    return 130 if interrupted else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
