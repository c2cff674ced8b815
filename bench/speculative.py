#!/usr/bin/env python3
"""Speculative decoding, side by side: Pensieve with and without speculation against llama-server
without it and with each of its speculative modes, on edit-heavy agent turns and on plain chat.

Stdlib only (Python 3.11). Every server is started once, on the same GGUF file and thread count,
one slot each; requests go one at a time, the sides in turn (the order rotates each round), so
no two servers ever compute at once. Every request is a streaming `POST /v1/messages`,
temperature 0, as Claude Code sends them:

  edit-heavy  a coding turn: a Claude Code-like system prompt, a ~200-line file as Read shows it
              (numbered lines), and an instruction whose answer is the whole updated file in a
              code block (what a Write call carries)
  chat        a short question that the model answers in prose

  decode tok/s = (output_tokens - 1) / (time of last content delta - time of first content delta)

For Pensieve with speculation the drafted and accepted tokens come from /metrics; llama-server's
acceptance is read from its log ("draft acceptance rate"). Ratios are of medians over all
requests of a set. `--draft-model` adds llama-server with that draft model (and Pensieve with
it, when the binary has --draft-model). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from client import decode_rate, stream_message
from common import (
    DEFAULT_LLAMA_BIN,
    DEFAULT_PENSIEVE_BIN,
    QWEN,
    Server,
    binary_version,
    free_port,
    install_signal_handlers,
    kill_all,
    llama_command,
    log,
    pensieve_command,
    pensieve_flags,
    scrape,
    server_env,
)

HERE = Path(__file__).resolve().parent

SYSTEM = (
    "You are Claude Code, an interactive CLI tool that helps users with software engineering "
    "tasks. Keep a file's code exactly as it is except for the change asked for."
)

# (file, first line, last line, instruction): files of this repository, so the code is real.
# The answer asked for is the updated code itself, what a Write call would carry: a 0.5B
# model asked for a Write or an Edit call writes a summary or calls Read again.
EDITS = [
    (
        "bench/common.py",
        46,
        245,
        "Rename the function `fnum` to `format_number` everywhere in this file.",
    ),
    (
        "bench/client.py",
        1,
        200,
        "Rename `notes` to `warnings` in every function of this file.",
    ),
    (
        "bench/synthetic.py",
        1,
        200,
        "Add a type annotation to every function parameter that lacks one.",
    ),
]
ANSWER = (
    " Reply with the whole updated file in one ```python code block, every line copied exactly "
    "(without the line numbers), nothing else."
)

CHATS = [
    "Explain how a hash map handles collisions, with an example.",
    "What are the trade-offs between processes and threads? Answer in a few paragraphs.",
    "Describe how a compiler turns source code into machine code, step by step.",
]


def read_lines(rel: str, first: int, last: int) -> str:
    lines = (HERE.parent / rel).read_text().splitlines()[first - 1 : last]
    # Claude Code's Read shows `cat -n` style numbered lines
    return "\n".join(f"{i:>6}\t{line}" for i, line in enumerate(lines, start=first))


def edit_body(model: str, max_tokens: int, rel: str, first: int, last: int, instruction: str) -> dict:
    # The file as Claude Code's Read shows it, in the user's turn: with tools offered, a 0.5B
    # model calls Read again or writes a one-line Edit instead of the file.
    path = f"/home/user/project/{rel}"
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "system": SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": f"{path}:\n\n{read_lines(rel, first, last)}\n\n{instruction}{ANSWER}",
            },
        ],
    }


def chat_body(model: str, max_tokens: int, question: str) -> dict:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": question}],
    }


def output_text(r: dict) -> str:
    """What the model wrote, text and tool inputs alike, to compare two sides' outputs."""
    parts = []
    for b in r.get("content") or []:
        if b.get("type") == "text":
            parts.append(b.get("text", ""))
        elif b.get("type") == "tool_use":
            parts.append(json.dumps(b.get("input"), sort_keys=True))
    return "\n".join(parts)


def draft_counters(port: int) -> tuple[float, float]:
    m = scrape(port)
    return m.get("pensieve_draft_tokens_total", 0.0), m.get("pensieve_draft_accepted_tokens_total", 0.0)


LLAMA_ACCEPT = re.compile(r"draft acceptance(?: rate)? = ([0-9.]+) \(\s*(\d+) accepted /\s*(\d+) generated\)")


def llama_acceptance(srv: Server, since: int) -> tuple[int, int]:
    """Accepted and drafted tokens llama-server logged after byte `since` of its log."""
    text = srv.log_path.read_bytes()[since:].decode(errors="replace")
    acc = gen = 0
    for m in LLAMA_ACCEPT.finditer(text):
        acc += int(m.group(2))
        gen += int(m.group(3))
    return acc, gen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=QWEN)
    ap.add_argument("--draft-model", help="a small model with the same tokenizer, to draft for --model")
    ap.add_argument("--pensieve-bin", default=DEFAULT_PENSIEVE_BIN)
    ap.add_argument("--llama-bin", default=DEFAULT_LLAMA_BIN)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument(
        "--llama-spec",
        default="ngram-simple,ngram-map-k,ngram-mod,ngram-cache",
        help="llama-server --spec-type values to compare, comma-separated ('' for none)",
    )
    ap.add_argument("--sets", default="edit,chat")
    ap.add_argument(
        "--llama-args",
        default="",
        help="more llama-server flags for every llama side, e.g. '-ngl 99' on a GPU (Pensieve offloads all by itself)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="one more side: NAME starting with 'llama' runs llama-server, else Pensieve, with FLAGS "
        "(e.g. 'llama-fa-on=-fa on' or 'pensieve+ngram-fa-on=--speculative ngram --flash-attn on')",
    )
    ap.add_argument("--only", default="", help="run only the sides whose names contain this (comma-separated)")
    ap.add_argument("--skip", default="", help="leave out the sides named (comma-separated, exact names)")
    ap.add_argument("--health-timeout", type=float, default=180)
    ap.add_argument("--request-timeout", type=float, default=900)
    ap.add_argument("--json", default=None, metavar="FILE", help="everything, each request's output included")
    ap.add_argument("--log-dir", default=None, help="server logs (default: a new temp dir)")
    args = ap.parse_args()
    install_signal_handlers()

    model_name = Path(args.model).stem
    logdir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="pensieve-spec-"))
    logdir.mkdir(parents=True, exist_ok=True)
    log(f"server logs in {logdir}")
    sides: dict[str, Server] = {}

    def add(side: str, cmd: list[str]) -> None:
        port = free_port()
        cmd = [port if c == "PORT" else c for c in cmd]
        sides[side] = Server(side, [str(c) for c in cmd], port, logdir / f"{side}.log", env=server_env())

    def pensieve(extra: list[str]) -> list:
        return pensieve_command(args.pensieve_bin, args.model, "PORT", args.threads, args.ctx, extra, parallel=1)

    def llama(extra: list[str]) -> list:
        return llama_command(
            args.llama_bin, args.model, "PORT", args.threads, 1, args.ctx, shlex.split(args.llama_args) + extra
        )

    add("pensieve", pensieve(["--speculative", "off"]))
    add("pensieve+ngram", pensieve(["--speculative", "ngram"]))
    add("llama-server", llama([]))
    for kind in [k for k in args.llama_spec.split(",") if k]:
        add(f"llama+{kind}", llama(["--spec-type", kind]))
    if args.draft_model:
        add("llama+draft", llama(["--spec-type", "draft-simple", "--spec-draft-model", args.draft_model]))
        if "--draft-model" in pensieve_flags(args.pensieve_bin):
            add("pensieve+draft", pensieve(["--speculative", "draft", "--draft-model", args.draft_model]))

    for variant in args.variant:
        name, _, flags = variant.partition("=")
        add(name, (llama if name.startswith("llama") else pensieve)(shlex.split(flags)))

    if args.only:
        keep = [k for k in args.only.split(",") if k]
        sides = {name: srv for name, srv in sides.items() if any(k in name for k in keep)}
    skip = set(args.skip.split(","))
    sides = {name: srv for name, srv in sides.items() if name not in skip}

    results: dict = {
        "model": args.model,
        "draft_model": args.draft_model,
        "pensieve": binary_version(args.pensieve_bin),
        "llama": binary_version(args.llama_bin),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "runs": [],
    }
    try:
        for srv in sides.values():
            srv.start(args.health_timeout)
            # warm-up: the weights faulted in, threads started; not measured
            stream_message(srv.port, chat_body(model_name, 8, "Say hello."), args.request_timeout)
        cases = []
        if "edit" in args.sets:
            cases += [
                ("edit", f"edit-{i}", lambda e=e: edit_body(model_name, args.max_tokens, *e))
                for i, e in enumerate(EDITS)
            ]
        if "chat" in args.sets:
            cases += [
                ("chat", f"chat-{i}", lambda q=q: chat_body(model_name, args.max_tokens, q))
                for i, q in enumerate(CHATS)
            ]
        names = list(sides)
        for rnd in range(args.rounds):
            for set_name, case, body in cases:
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for side in order:
                    srv = sides[side]
                    before = draft_counters(srv.port) if side.startswith("pensieve") else None
                    log_at = srv.log_path.stat().st_size
                    r = stream_message(srv.port, body(), args.request_timeout)
                    run = {
                        "round": rnd,
                        "set": set_name,
                        "case": case,
                        "side": side,
                        "decode_tok_s": decode_rate(r),
                        "output_tokens": r["output_tokens"],
                        "stop_reason": r["stop_reason"],
                        "output": output_text(r),
                    }
                    if before is not None:
                        after = draft_counters(srv.port)
                        run["drafted"], run["accepted"] = after[0] - before[0], after[1] - before[1]
                    else:
                        time.sleep(0.2)  # llama-server logs the request's timings as it ends
                        run["accepted"], run["drafted"] = llama_acceptance(srv, log_at)
                    results["runs"].append(run)
                    log(
                        f"round {rnd} {case} {side}: {run['output_tokens']} tokens, "
                        f"{(run['decode_tok_s'] or 0):.1f} tok/s, drafted {run['drafted']:.0f} "
                        f"accepted {run['accepted']:.0f}"
                    )
    finally:
        kill_all()

    summary = summarize_runs(results["runs"], list(sides))
    results["summary"] = summary
    print_summary(summary, list(sides))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        log(f"results in {args.json}")
    return 0


def summarize_runs(runs: list[dict], sides: list[str]) -> dict:
    out: dict = {}
    for set_name in sorted({r["set"] for r in runs}):
        per: dict = {}
        for side in sides:
            rs = [r for r in runs if r["set"] == set_name and r["side"] == side]
            rates = [r["decode_tok_s"] for r in rs if r["decode_tok_s"]]
            drafted = sum(r["drafted"] for r in rs)
            per[side] = {
                "decode_tok_s": statistics.median(rates) if rates else None,
                "output_tokens": sum(r["output_tokens"] for r in rs),
                "drafted": drafted,
                "accepted": sum(r["accepted"] for r in rs),
            }
        # Greedy output with speculation against without, request by request.
        base = {(r["round"], r["case"]): r["output"] for r in runs if r["side"] == "pensieve" and r["set"] == set_name}
        for side in sides:
            if side.startswith("pensieve+"):
                same = [
                    r["output"] == base.get((r["round"], r["case"]))
                    for r in runs
                    if r["side"] == side and r["set"] == set_name
                ]
                per[side]["same_output"] = f"{sum(same)}/{len(same)}"
        out[set_name] = per
    return out


def print_summary(summary: dict, sides: list[str]) -> None:
    for set_name, per in summary.items():
        base = per.get("pensieve", {}).get("decode_tok_s")
        llamas = [per[s]["decode_tok_s"] for s in sides if s.startswith("llama") and per[s]["decode_tok_s"]]
        best_llama = max(llamas) if llamas else None
        print(f"\n{set_name}: median decode tok/s")
        print(
            f"{'side':<22}{'tok/s':>8}{'x pensieve':>12}{'x best llama':>14}{'accepted/drafted':>20}{'same output':>13}"
        )
        for side in sides:
            p = per[side]
            rate = p["decode_tok_s"]
            vs_base = f"{rate / base:.2f}x" if rate and base else "-"
            vs_llama = f"{rate / best_llama:.2f}x" if rate and best_llama else "-"
            acc = f"{p['accepted']:.0f}/{p['drafted']:.0f}" if p["drafted"] else "-"
            rate_s = f"{rate:.1f}" if rate else "-"
            print(f"{side:<22}{rate_s:>8}{vs_base:>12}{vs_llama:>14}{acc:>20}{p.get('same_output', ''):>13}")


if __name__ == "__main__":
    sys.exit(main())
