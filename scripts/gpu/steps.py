#!/usr/bin/env python3
"""Where Pensieve's decode steps go: medians of the engine's step trace (PENSIEVE_LOG=
info,pensieve_engine::scheduler=trace,pensieve_llama=trace) per batch size.

  decode_us  llama_decode (on CUDA it returns once the graph is queued)
  wait_us    then waiting for the GPU to finish the step and hand over the logits
  argmax_us  sampling every sequence of the step (greedy: an argmax each, on all cores)
  other_us   the rest of the step: prefix-cache checkpoints, stop sequences, detokenising
             and handing the tokens to the streams

usage: steps.py SERVER.log"""

import re
import statistics
import sys
from collections import defaultdict

STEP = re.compile(
    r"tokens=(\d+) slot_runs=(\d+) decode_us=(\d+) sample_us=(\d+) step_us=(\d+)"
)
SAMPLED = re.compile(r"sequences=(\d+) wait_us=(\d+) sample_us=(\d+)")
by_size = defaultdict(list)
sampled = (0, 0)
with open(sys.argv[1], errors="replace") as log:
    for line in log:
        if m := SAMPLED.search(line):
            sampled = (int(m.group(2)), int(m.group(3)))
        elif m := STEP.search(line):
            tokens, _, decode, sample_all, step = map(int, m.groups())
            wait, argmax = sampled
            by_size[tokens].append(
                (decode, wait, argmax, step - decode - sample_all, step)
            )
            sampled = (0, 0)
print("tokens  steps  decode_us  wait_us  argmax_us  other_us  step_us   (p50s)")
for tokens in sorted(by_size, key=lambda t: -len(by_size[t]))[:8]:
    rows = by_size[tokens]
    p50 = [statistics.median(r[k] for r in rows) for k in range(5)]
    print(f"{tokens:6d} {len(rows):6d} " + " ".join(f"{v:9.0f}" for v in p50))
