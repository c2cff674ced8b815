#!/usr/bin/env python3
"""Where Pensieve's decode steps go: medians of the engine's step trace (PENSIEVE_LOG=
info,pensieve_engine::scheduler=trace,pensieve_llama=trace) per batch size.

  decode_us  llama_decode (on CUDA it returns once the graph is queued)
  wait_us    then waiting for the GPU to finish the step and hand over the logits
  argmax_us  sampling every sequence of the step (greedy: an argmax each, on all cores)
  other_us   the rest of the step: prefix-cache checkpoints, stop sequences, detokenising
             and handing the tokens to the streams
  gap_us     from one step's end to the next one's (the engine loop: admitting, planning),
             from the log's timestamps, between consecutive steps of that size

Then the means of step_us and of step-to-step time, which the tokens a client sees follow.

usage: steps.py SERVER.log"""

import re
import statistics
import sys
from collections import defaultdict
from datetime import datetime

STEP = re.compile(r"tokens=(\d+) slot_runs=(\d+) decode_us=(\d+) sample_us=(\d+) step_us=(\d+)")
SAMPLED = re.compile(r"sequences=(\d+) wait_us=(\d+) sample_us=(\d+)")
# tracing's timestamp, e.g. 2026-12-04T17:45:52.123456Z (ANSI colour codes around it)
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def seconds(line: str) -> float | None:
    m = STAMP.search(line)
    return datetime.fromisoformat(m.group(1)).timestamp() if m else None


by_size = defaultdict(list)
# Step-to-step times (microseconds) and end-to-next-start gaps, per size.
periods, gaps = defaultdict(list), defaultdict(list)
sampled = (0, 0)
last = None  # (tokens, end time) of the step before
with open(sys.argv[1], errors="replace") as log:
    for line in log:
        if m := SAMPLED.search(line):
            sampled = (int(m.group(2)), int(m.group(3)))
        elif m := STEP.search(line):
            tokens, _, decode, sample_all, step = map(int, m.groups())
            wait, argmax = sampled
            by_size[tokens].append((decode, wait, argmax, step - decode - sample_all, step))
            sampled = (0, 0)
            end = seconds(line)
            if end is not None and last is not None and last[0] == tokens:
                period = 1e6 * (end - last[1])
                # Only back-to-back steps: an idle engine waits for requests.
                if period < 10 * step + 1000:
                    periods[tokens].append(period)
                    gaps[tokens].append(period - step)
            last = (tokens, end) if end is not None else None
print(
    "tokens  steps  decode_us  wait_us  argmax_us  other_us  step_us   gap_us   (p50s)   mean step_us  mean period_us"
)
for tokens in sorted(by_size, key=lambda t: -len(by_size[t]))[:8]:
    rows = by_size[tokens]
    p50 = [statistics.median(r[k] for r in rows) for k in range(5)]
    gap = statistics.median(gaps[tokens]) if gaps[tokens] else float("nan")
    mean_step = statistics.fmean(r[4] for r in rows)
    period = statistics.fmean(periods[tokens]) if periods[tokens] else float("nan")
    print(
        f"{tokens:6d} {len(rows):6d} "
        + " ".join(f"{v:9.0f}" for v in p50)
        + f" {gap:8.0f}   {mean_step:12.0f} {period:15.0f}"
    )
