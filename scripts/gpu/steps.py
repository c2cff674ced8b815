#!/usr/bin/env python3
"""Where Pensieve's decode steps go: medians of the engine's step trace (PENSIEVE_LOG=
info,pensieve_engine=trace) per batch size. decode_us is llama_decode (on CUDA it returns once the
graph is queued); step_us adds reading the logits (which waits for the GPU), sampling and
handing tokens to the streams. usage: steps.py SERVER.log"""

import re
import statistics
import sys
from collections import defaultdict

STEP = re.compile(r"tokens=(\d+) slot_runs=(\d+) decode_us=(\d+) step_us=(\d+)")
by_size = defaultdict(list)
with open(sys.argv[1], errors="replace") as log:
    for line in log:
        m = STEP.search(line)
        if m:
            tokens, _, decode, step = map(int, m.groups())
            by_size[tokens].append((decode, step))
print("tokens  steps  decode_us_p50  step_us_p50  other_us_p50")
for tokens in sorted(by_size, key=lambda t: -len(by_size[t]))[:8]:
    rows = by_size[tokens]
    d = statistics.median(r[0] for r in rows)
    s = statistics.median(r[1] for r in rows)
    o = statistics.median(r[1] - r[0] for r in rows)
    print(f"{tokens:6d} {len(rows):6d} {d:14.0f} {s:12.0f} {o:13.0f}")
