"""Continuous batching and the prefix cache, end to end: the real binary serving
SmolLM2-135M-Instruct with --parallel / --ctx / --cache-ram / --cache-dir, driven over
HTTP (the `anthropic` SDK and raw SSE through httpx) and observed through the usage it
reports and GET /metrics.

Usage accounting checked here: cache_read_input_tokens = prompt tokens served from the
cache; with `cache_control` breakpoints, cache_creation_input_tokens = the prompt tokens
computed up to the last breakpoint (a mark on the system prompt holds after it and the
tools), input_tokens = the rest, as Anthropic counts; without any, cache_creation = 0 and
input_tokens = prompt - cache_read. The last prompt token is always computed, so an
exact repeat reads prompt - 1.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import pytest
from conftest import GEMMA3, REQUESTED_MODEL, SMOLLM2, Server, model_path, pensieve_bin, summary_line
from helpers import iter_sse, scrape

T0 = {"temperature": 0}
CACHED = {"type": "ephemeral"}
MiB = 1 << 20

# Tokens that may differ at the end of two prompts sharing a system prompt: the user
# turn (a short question) and the template's tail.
SUFFIX_BOUND = 40

WORDS = (
    "harbor lantern copper meadow signal orchard granite whisper canyon ledger "
    "falcon thistle ember quarry saddle beacon tundra velvet anchor cobalt "
    "marble prairie glacier hollow summit willow tangent cipher raven harvest "
    "compass timber frost lagoon pepper violet mosaic ribbon orbit parcel"
).split()


def filler(n_words: int, seed: int) -> str:
    """Deterministic text of about 1.3 SmolLM2 tokens a word."""
    rng = random.Random(seed)
    sentences = []
    for start in range(0, n_words, 12):
        words = [rng.choice(WORDS) for _ in range(min(12, n_words - start))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def nonce() -> str:
    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def serving(*args: str):
    server = Server(model_path(SMOLLM2), list(args))
    try:
        server.start()
        yield server
    finally:
        server.close()


def sdk(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=180.0)


def count_tokens(server: Server, **request) -> int:
    body = {"model": REQUESTED_MODEL, **{k: v for k, v in request.items() if k in ("system", "messages")}}
    r = httpx.post(f"{server.url}/v1/messages/count_tokens", json=body, timeout=60.0)
    assert r.status_code == 200, r.text
    return r.json()["input_tokens"]


def create(server: Server, **request):
    """A non-streaming request through the SDK (sampling parameters in the body: SDK 2.x)."""
    extra = {k: request.pop(k) for k in ("temperature",) if k in request}
    return sdk(server).messages.create(model=REQUESTED_MODEL, extra_body=extra, **request)


def _tiers(m) -> dict[str, tuple[int, int]]:
    """(entries, bytes) of each cache tier in a /metrics scrape."""
    return {
        t: (int(m.get("pensieve_cache_entries", tier=t)), int(m.get("pensieve_cache_bytes", tier=t)))
        for t in ("context", "host", "disk")
    }


def usage_str(u) -> str:
    return (
        f"input={u.input_tokens} creation={u.cache_creation_input_tokens} "
        f"read={u.cache_read_input_tokens} output={u.output_tokens}"
    )


# --- 1. continuous batching ------------------------------------------------------------

STORY_PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Write a long story about a young baker who opens a shop in a mountain village.",
]


def _stream_deltas(url: str, body: dict, barrier: threading.Barrier, out: dict) -> None:
    times: list[float] = []
    out["times"] = times
    try:
        with httpx.Client(base_url=url, timeout=180.0) as c:
            barrier.wait(timeout=30)
            with c.stream("POST", "/v1/messages", json=body) as r:
                out["status"] = r.status_code
                if r.status_code != 200:
                    out["error"] = r.read().decode(errors="replace")
                    return
                for name, data in iter_sse(r):
                    if name == "content_block_delta":
                        times.append(time.monotonic())
                    elif name == "message_delta":
                        out["usage"] = data["usage"]
                    elif name == "error":
                        out["error"] = data
    except Exception as e:  # surfaced by the test thread
        out["error"] = repr(e)


def _two_concurrent_streams(server: Server) -> tuple[list[float], list[float], int, int]:
    """Two long streams sent at the same moment; their delta arrival times, and the most
    running sequences / queued requests /metrics showed meanwhile."""
    bodies = [
        {
            "model": REQUESTED_MODEL,
            "max_tokens": 150,
            **T0,
            "stream": True,
            "messages": [{"role": "user", "content": p}],
        }
        for p in STORY_PROMPTS
    ]
    barrier = threading.Barrier(3)
    results: list[dict] = [{}, {}]
    threads = [
        threading.Thread(target=_stream_deltas, args=(server.url, body, barrier, out), daemon=True)
        for body, out in zip(bodies, results)
    ]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    max_running = max_queued = 0
    deadline = time.monotonic() + 400
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        m = scrape(server.url)
        max_running = max(max_running, int(m.get("pensieve_running_sequences")))
        max_queued = max(max_queued, int(m.get("pensieve_queue_depth")))
        time.sleep(0.25)
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), f"a stream did not finish\n--- server log ---\n{server.log_tail()}"
    for out in results:
        assert "error" not in out, f"{out.get('error')}\n--- server log ---\n{server.log_tail()}"
        # Premise: both answers are long enough for overlap (or its absence) to show.
        assert len(out["times"]) >= 40, f"only {len(out['times'])} deltas: {out.get('usage')}"
    return results[0]["times"], results[1]["times"], max_running, max_queued


def test_two_concurrent_streams_both_progress():
    """--parallel 2: each stream's first token comes before the other's last one."""
    with serving("--parallel", "2", "--ctx", "2048") as server:
        a, b, max_running, _ = _two_concurrent_streams(server)
    first, second = (a, b) if a[0] <= b[0] else (b, a)
    assert second[0] < first[-1], (
        "the second stream waited for the first to finish: "
        f"first stream {first[0]:.2f}..{first[-1]:.2f}, second starts {second[0]:.2f}"
    )
    # And not merely a first token: the second keeps streaming while the first is going.
    during = sum(1 for t in second if t < first[-1])
    assert during >= 10, f"only {during} of the second stream's deltas arrived while the first was streaming"
    assert max_running == 2, f"/metrics never showed 2 running sequences (max {max_running})"


def test_parallel_one_streams_wait_their_turn():
    """--parallel 1: the same two streams run one after the other (the check above can fail)."""
    with serving("--parallel", "1", "--ctx", "2048") as server:
        a, b, max_running, max_queued = _two_concurrent_streams(server)
    first, second = (a, b) if a[0] <= b[0] else (b, a)
    assert second[0] > first[-1], (
        f"with one sequence, the second stream started at {second[0]:.2f}, before the first ended at {first[-1]:.2f}"
    )
    assert max_running == 1, max_running
    assert max_queued >= 1, f"/metrics never showed the waiting request (queue depth max {max_queued})"


# --- 2. a shared long prefix ------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_server():
    """Two sequences of 4k tokens; RAM for snapshots; no disk."""
    with serving("--parallel", "2", "--ctx", "4096", "--cache-ram", "256MiB") as server:
        yield server


def test_shared_prefix_reads_from_cache(cache_server):
    """A ~1,500-token system prompt, then the same system prompt with another question:
    the second request reads the shared prefix from the cache and computes only its own
    tail, and says so in its usage and in /metrics."""
    server = cache_server
    system_text = f"[{nonce()}] Reference notes follow. " + filler(1200, seed=2)
    system = [{"type": "text", "text": system_text, "cache_control": CACHED}]
    msgs_a = [{"role": "user", "content": "Which word comes first in the notes?"}]
    msgs_b = [{"role": "user", "content": "Summarise the notes in one sentence."}]
    n_a = count_tokens(server, system=system, messages=msgs_a)
    n_b = count_tokens(server, system=system, messages=msgs_b)
    assert 1300 <= n_b <= 1900, f"test premise: a ~1,500-token prompt, got {n_b}"

    before = scrape(server.url)
    # A: nothing of it is cached yet; everything is computed (and, asked to, stored).
    first = create(server, max_tokens=8, **T0, system=system, messages=msgs_a)
    u = first.usage
    assert u.cache_read_input_tokens == 0, usage_str(u)
    # The system prompt, up to its breakpoint, is cache creation; the question after it
    # is plain input.
    assert u.cache_creation_input_tokens + u.input_tokens == n_a, (usage_str(u), n_a)
    assert 1 <= u.input_tokens <= SUFFIX_BOUND, (usage_str(u), n_a)

    # B, streamed: the shared system prompt comes from the cache, only the suffix is run.
    body = {"model": REQUESTED_MODEL, "max_tokens": 8, **T0, "stream": True, "system": system, "messages": msgs_b}
    with httpx.Client(base_url=server.url, timeout=180.0) as c:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200, r.read()
            events = list(iter_sse(r))
    start = next(d for n, d in events if n == "message_start")["message"]["usage"]
    final = next(d for n, d in events if n == "message_delta")["usage"]
    assert split_of(start) == split_of(final), f"message_start {start}, message_delta {final}"
    read = final["cache_read_input_tokens"]
    computed = final["input_tokens"] + final["cache_creation_input_tokens"]
    assert read + computed == n_b, (final, n_b)
    assert read >= n_b - SUFFIX_BOUND, f"the shared prefix was not read from the cache: {final} (prompt {n_b})"
    assert read <= n_b - 1, final
    assert 1 <= computed <= SUFFIX_BOUND, f"more than the suffix was computed: {final}"
    assert final["cache_creation_input_tokens"] == 0 and final["input_tokens"] == computed, (
        f"the breakpoint after the system prompt was read: nothing computed is cache creation: {final}"
    )

    after = scrape(server.url)
    cached = after.get("pensieve_cached_prompt_tokens_total") - before.get("pensieve_cached_prompt_tokens_total")
    prompted = after.get("pensieve_prompt_tokens_total") - before.get("pensieve_prompt_tokens_total")
    assert cached == read, f"pensieve_cached_prompt_tokens_total grew by {cached}, the response read {read}"
    assert prompted == n_a + n_b, (prompted, n_a, n_b)

    # B again, no cache_control anywhere: all but the last token is read; nothing is
    # reported as cache creation.
    plain_system = [{"type": "text", "text": system_text}]
    assert count_tokens(server, system=plain_system, messages=msgs_b) == n_b
    again = create(server, max_tokens=8, **T0, system=plain_system, messages=msgs_b)
    u = again.usage
    assert u.cache_read_input_tokens == n_b - 1, usage_str(u)
    assert u.cache_creation_input_tokens == 0, usage_str(u)
    assert u.input_tokens == 1, usage_str(u)


SPLIT = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def split_of(usage: dict) -> dict[str, int]:
    """The prompt's split in a raw usage block (all but the output tokens)."""
    return {k: usage[k] for k in SPLIT}


def stream_raw(server: Server, **request) -> tuple[dict, dict, str]:
    """Stream a request through the anthropic SDK and read its raw SSE: the usage of
    message_start, the usage of message_delta, and the text."""
    extra = {k: request.pop(k) for k in ("temperature",) if k in request}
    create_raw = sdk(server).messages.with_streaming_response.create
    with create_raw(model=REQUESTED_MODEL, stream=True, extra_body=extra, **request) as r:
        assert r.http_response.headers["content-type"].startswith("text/event-stream")
        events = list(iter_sse(r))
    start = next(d for n, d in events if n == "message_start")["message"]["usage"]
    final = next(d for n, d in events if n == "message_delta")["usage"]
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    return start, final, text


def test_message_start_reports_the_final_cache_split(cache_server):
    """Anthropic's API splits the prompt into uncached, cache-creation and cache-read
    tokens from message_start on. A cold request, its conversation's next turn (warm),
    and that turn again without cache_control, streamed through the SDK: each
    message_start reports the split its message_delta ends with."""
    server = cache_server
    notes = f"[{nonce()}] Reference notes follow. " + filler(600, seed=7)
    system = [{"type": "text", "text": notes, "cache_control": CACHED}]
    turn = [{"role": "user", "content": "Which word comes first in the notes?"}]
    n = count_tokens(server, system=system, messages=turn)
    assert n >= 600, f"test premise: a long prompt, got {n}"

    # Cold: nothing but the template's first tokens read (other prompts start with them);
    # up to the breakpoint after the system prompt is cache creation, the question input.
    start, final, reply = stream_raw(server, max_tokens=8, **T0, system=system, messages=turn)
    assert split_of(start) == split_of(final), f"message_start {start}, message_delta {final}"
    read = start["cache_read_input_tokens"]
    assert read < 64 and 1 <= start["input_tokens"] <= SUFFIX_BOUND, (start, n)
    assert start["cache_creation_input_tokens"] == n - read - start["input_tokens"], (start, n)
    assert start["output_tokens"] == 0 and final["output_tokens"] > 0, (start, final)

    # Warm: the next turn of the same conversation, sent as soon as the first ended.
    turn2 = [*turn, {"role": "assistant", "content": reply}, {"role": "user", "content": "And the last word?"}]
    n2 = count_tokens(server, system=system, messages=turn2)
    start, final, _ = stream_raw(server, max_tokens=8, **T0, system=system, messages=turn2)
    assert split_of(start) == split_of(final), f"message_start {start}, message_delta {final}"
    read = start["cache_read_input_tokens"]
    assert n - SUFFIX_BOUND <= read < n2, f"the first turn was not read from the cache: {start} (prompts {n}, {n2})"
    assert start["cache_creation_input_tokens"] == 0 and start["input_tokens"] == n2 - read, (start, n2)
    summary_line(f"warm turn of {n2} tokens: message_start and message_delta both say {split_of(start)}")

    # The same turn again without cache_control: all but the last token read, the last
    # one plain input.
    plain = [{"type": "text", "text": notes}]
    start, final, _ = stream_raw(server, max_tokens=8, **T0, system=plain, messages=turn2)
    assert split_of(start) == split_of(final), f"message_start {start}, message_delta {final}"
    again = {"input_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": n2 - 1}
    assert split_of(start) == again, (start, n2)


def test_a_breakpoint_is_a_snapshot_point_where_the_cache_cannot_cut_back():
    """Gemma 3's sliding-window layers can't be cut back to an earlier position, so only
    whole snapshots serve a later prompt. A system prompt marked with cache_control gets
    one at its breakpoint: a second question on it reads the system prompt from the
    cache. The same two questions on an unmarked system prompt read (almost) nothing."""
    server = Server(model_path(GEMMA3), ["--parallel", "1", "--ctx", "2048"])
    try:
        server.start()
        for marked in (True, False):
            notes = f"[{nonce()}] Reference notes follow. " + filler(500, seed=11)
            block = {"type": "text", "text": notes}
            system = [{**block, "cache_control": CACHED}] if marked else [block]
            first = [{"role": "user", "content": "Which word comes first in the notes?"}]
            second = [{"role": "user", "content": "Summarise the notes in one sentence."}]
            n = count_tokens(server, system=system, messages=second)
            assert n >= 500, f"test premise: a long system prompt, got {n}"
            create(server, max_tokens=4, **T0, system=system, messages=first)
            u = create(server, max_tokens=4, **T0, system=system, messages=second).usage
            if marked:
                assert u.cache_read_input_tokens >= n - SUFFIX_BOUND, (usage_str(u), n)
                assert u.cache_creation_input_tokens == 0, usage_str(u)
                summary_line(f"Gemma 3, marked system prompt: {u.cache_read_input_tokens} of {n} tokens read")
            else:
                assert u.cache_read_input_tokens < 64, (usage_str(u), n)
    finally:
        server.close()


def test_requests_arriving_together_compute_their_shared_prefix_once():
    """Three requests sent at once with the same new ~1,000-token system prompt (two of
    them identical, as a retry or a fan-out would be): the prompt is computed once and
    copied to the others, whose usage says so, and the copies answer exactly as the
    request that computed it (temperature 0)."""
    with serving("--parallel", "3", "--ctx", "2048") as server:
        system = f"[{nonce()}] Reference notes follow. " + filler(800, seed=5)
        questions = ["Which word comes first in the notes?"] * 2 + ["Summarise the notes in one sentence."]
        prompts = [count_tokens(server, system=system, messages=[{"role": "user", "content": q}]) for q in questions]
        assert prompts[0] >= 900, f"test premise: a ~1,000-token prompt, got {prompts[0]}"
        before = scrape(server.url)
        barrier = threading.Barrier(len(questions))
        results: list = [None] * len(questions)

        def ask(i: int) -> None:
            try:
                barrier.wait(timeout=30)
                results[i] = create(
                    server, max_tokens=24, **T0, system=system, messages=[{"role": "user", "content": questions[i]}]
                )
            except Exception as e:  # surfaced below
                results[i] = e

        threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for r in results:
            assert not isinstance(r, Exception) and r is not None, f"{r!r}\n{server.log_tail()}"
        after = scrape(server.url)

    reads = [r.usage.cache_read_input_tokens for r in results]
    for r, n in zip(results, prompts):
        u = r.usage
        assert u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens == n, (usage_str(u), n)
    # One of them computed the system prompt; the other two read it.
    assert sorted(reads)[0] <= SUFFIX_BOUND, reads
    for read, n in sorted(zip(reads, prompts))[1:]:
        assert read >= n - SUFFIX_BOUND, f"the shared prompt was computed again: read {reads} of {prompts}"
    # The identical pair: the copy continues exactly as the computed original.
    texts = ["".join(b.text for b in r.content if b.type == "text") for r in results]
    assert texts[0] == texts[1], texts
    cached = after.get("pensieve_cached_prompt_tokens_total") - before.get("pensieve_cached_prompt_tokens_total")
    assert cached == sum(reads), (cached, reads)


# --- 3. eviction under a byte budget ----------------------------------------------------

EVICT_RAM = 16 * MiB


def _notes_prompts(k: int) -> list[list[dict]]:
    """k ~400-token prompts, distinct from their first word on."""
    return [
        [{"role": "user", "content": f"{nonce()} Notes: " + filler(300, seed=100 + i) + " Which word is first?"}]
        for i in range(k)
    ]


def test_eviction_keeps_host_cache_under_budget():
    """A 1,024-cell KV pool holds about two ~400-token conversations; older ones are
    snapshotted to RAM, whose 16 MiB hold one such snapshot (~23 KB a token, ~9.4 MB),
    so RAM must evict too. After every request the RAM tier is within its budget."""
    with serving("--parallel", "1", "--ctx", "1024", "--cache-ram", "16MiB") as server:
        seen = []
        for i, messages in enumerate(_notes_prompts(5)):
            n = count_tokens(server, messages=messages)
            assert 300 <= n <= 600, f"test premise: a ~400-token prompt, got {n}"
            msg = create(server, max_tokens=4, **T0, messages=messages)
            assert msg.usage.cache_read_input_tokens < 64, (
                f"prompt {i} starts with a fresh nonce, yet read {usage_str(msg.usage)}"
            )
            tiers = _tiers(scrape(server.url))
            seen.append(tiers)
            host_bytes = tiers["host"][1]
            assert host_bytes <= EVICT_RAM, f"after prompt {i}: {host_bytes} bytes in RAM > budget {EVICT_RAM}: {seen}"
        context_entries, host_entries = seen[-1]["context"][0], seen[-1]["host"][0]
        assert seen[-1]["host"][1] > 0 and host_entries >= 1, f"nothing was ever snapshotted to RAM: {seen}"
        # 5 x ~9.4 MB cannot all be kept in a 1,024-cell pool plus 16 MiB: some were dropped.
        assert context_entries + host_entries < 5, f"(entries, bytes) by tier after each request: {seen}"


def test_ram_snapshot_is_restored_into_a_full_pool():
    """An entry evicted from a full KV pool to RAM is read back from RAM by the next
    request that shares it: the cache makes room in the pool for it (as it does for a
    prefill) instead of computing the prompt again. Two ~600-token conversations and a
    1,024-cell pool: only one fits at a time, so which one is in RAM is certain."""
    with serving("--parallel", "1", "--ctx", "1024", "--cache-ram", "64MiB") as server:
        prompts = [
            [{"role": "user", "content": f"{nonce()} Notes: " + filler(450, seed=200 + i) + " Which word is first?"}]
            for i in range(2)
        ]
        counts = [count_tokens(server, messages=p) for p in prompts]
        assert all(520 <= n <= 700 for n in counts), f"test premise: two ~600-token prompts, got {counts}"
        for messages in prompts:
            create(server, max_tokens=4, **T0, messages=messages)
        tiers = _tiers(scrape(server.url))
        # Premise: the first conversation left the pool for RAM; the second holds the pool.
        assert tiers["host"][0] == 1 and tiers["context"][0] == 1, f"(entries, bytes) by tier: {tiers}"
        again = create(server, max_tokens=4, **T0, messages=prompts[0])
        assert again.usage.cache_read_input_tokens == counts[0] - 1, (
            f"the first prompt was in RAM ({tiers}), yet sending it again gave "
            f"{usage_str(again.usage)} (prompt {counts[0]})\n--- server log ---\n{server.log_tail(3000)}"
        )


# --- 4. a cancelled stream frees its cells ----------------------------------------------


def test_cancelled_stream_frees_its_sequence(cache_server):
    """A long stream abandoned after 10 deltas leaves the batch at once; what it computed
    goes to RAM, and the same prompt afterwards is read from there."""
    server = cache_server
    messages = [
        {
            "role": "user",
            "content": f"[{nonce()}] Write a very long, detailed story about a sailor crossing "
            "the ocean alone. Use many chapters and describe every day of the voyage.",
        }
    ]
    n = count_tokens(server, messages=messages)
    body = {"model": REQUESTED_MODEL, "max_tokens": 2000, **T0, "stream": True, "messages": messages}
    before = scrape(server.url)
    deltas = 0
    with httpx.Client(base_url=server.url, timeout=120.0) as c:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200, r.read()
            for name, _ in iter_sse(r):
                if name == "content_block_delta":
                    deltas += 1
                    if deltas == 10:
                        running = scrape(server.url).get("pensieve_running_sequences")
                        assert running == 1, f"the stream being read is not running? ({running})"
                        break
        # Leaving the loop (and the block) closes the connection.
    assert deltas == 10
    hung_up = time.monotonic()
    running = None
    while time.monotonic() - hung_up < 3.0:
        running = scrape(server.url).get("pensieve_running_sequences")
        if running == 0:
            break
        time.sleep(0.05)
    assert running == 0, (
        f"the cancelled sequence still runs 3 s after the client left\n--- server log ---\n{server.log_tail()}"
    )
    after = scrape(server.url)
    assert after.get("pensieve_queue_depth") == 0
    # Its cells were given back: what it computed is now a snapshot in RAM (admitting
    # it may have moved another entry there too).
    host_before, host_after = _tiers(before)["host"], _tiers(after)["host"]
    assert host_after[0] > host_before[0] and host_after[1] > host_before[1], (
        f"no RAM snapshot of the cancelled sequence: host (entries, bytes) {host_before} -> {host_after}"
    )
    generated = after.get("pensieve_generated_tokens_total") - before.get("pensieve_generated_tokens_total")
    assert generated < 200, f"{generated} tokens were generated for a stream abandoned after 10"

    # The server goes on serving.
    ok = create(server, max_tokens=8, **T0, messages=[{"role": "user", "content": "Say hello."}])
    assert ok.usage.output_tokens > 0

    # What the cancelled sequence computed was kept: the same prompt is read whole.
    again = create(server, max_tokens=4, **T0, messages=messages)
    assert again.usage.cache_read_input_tokens == n - 1, (
        f"the cancelled request's prompt was not kept in the cache: {usage_str(again.usage)}, prompt {n}"
    )


# --- 5. a restart with --cache-dir still hits -------------------------------------------


def test_restart_with_cache_dir_still_hits(tmp_path: Path):
    """Snapshots written to --cache-dir on SIGTERM are indexed by the next server on the
    same directory, which serves the same prompt from them."""
    cache_dir = tmp_path / "prefix-cache"
    server = Server(
        model_path(SMOLLM2), ["--parallel", "1", "--ctx", "2048", "--cache-ram", "64MiB", "--cache-dir", str(cache_dir)]
    )
    try:
        server.start()
        messages = [{"role": "user", "content": f"[{nonce()}] Notes: " + filler(800, seed=5) + " Which word is last?"}]
        n = count_tokens(server, messages=messages)
        assert 800 <= n <= 1300, f"test premise: a ~1,000-token prompt, got {n}"
        first = create(server, max_tokens=8, **T0, messages=messages)
        assert first.usage.cache_read_input_tokens < 64, usage_str(first.usage)
        assert scrape(server.url).get("pensieve_cache_entries", tier="disk") == 0

        code = server.terminate()
        assert code == 0, f"pensieve exited with {code} on SIGTERM\n--- server log ---\n{server.log_tail()}"
        files = [p for p in cache_dir.rglob("*.kv") if p.is_file() and p.stat().st_size > 0]
        assert files, f"nothing was written under {cache_dir} on shutdown\n--- server log ---\n{server.log_tail()}"
        assert sum(p.stat().st_size for p in files) >= (n - 1) * 10_000, (
            f"the snapshot files are too small for {n} tokens: {[(p.name, p.stat().st_size) for p in files]}"
        )

        server.start()
        at_start = _tiers(scrape(server.url))
        again = create(server, max_tokens=8, **T0, messages=messages)
        assert again.usage.cache_read_input_tokens == n - 1, (
            f"after the restart: {usage_str(again.usage)}, prompt {n}\n--- server log ---\n{server.log_tail()}"
        )
        assert again.content[0].text == first.content[0].text, "the cached KV gave a different answer"
        # The snapshots indexed at start show in /metrics from the start, not only once
        # a request has come.
        assert at_start["disk"][0] >= 1 and at_start["disk"][1] > 0, (
            f"/metrics right after the restart (entries, bytes): {at_start}"
        )
    finally:
        server.close()


# --- 6. KV cache types ------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_quantized_kv_cache_types_take_less_memory_and_keep_their_own_snapshots(tmp_path: Path):
    """--cache-type-k/-v as llama-server's: q4_0 K and V take ~18/64 of f16's bytes. With
    4 x 8192 cells SmolLM2's f16 cache is 720 MiB, so the process must shrink by at least
    half the 513 MiB difference; the disk tier keeps the two layouts apart."""
    cache_dir = tmp_path / "kv"
    base = ["--parallel", "4", "--ctx", "8192", "--cache-dir", str(cache_dir)]
    messages = [{"role": "user", "content": f"[{nonce()}] " + filler(200, seed=9)}]
    rss = {}
    for kv in ("f16", "q4_0"):
        with serving(*base, "--cache-type-k", kv, "--cache-type-v", kv) as server:
            rss[kv] = _rss_mib(server.proc.pid)
            first = create(server, max_tokens=8, **T0, messages=messages)
            assert first.content[0].text, "no answer"
            # A snapshot written by the other type's server is never offered to this one.
            assert first.usage.cache_read_input_tokens < 64, usage_str(first.usage)
            assert f"cache_type_k={kv} cache_type_v={kv}" in server.log_tail(100_000)
    summary_line(f"KV cache types, 4 x 8192 cells: RSS {rss['f16']:.0f} MiB f16, {rss['q4_0']:.0f} MiB q4_0")
    assert rss["f16"] - rss["q4_0"] >= 513 / 2, rss


def _serve_refused(*args: str) -> subprocess.CompletedProcess:
    """`pensieve serve` of SmolLM2 with `args`, expected to stop at start."""
    return subprocess.run(
        [str(pensieve_bin()), "serve", "--model", str(model_path(SMOLLM2)), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_kv_cache_type_is_refused_by_name():
    r = _serve_refused("--cache-type-k", "q3")
    assert r.returncode == 2, r
    assert '"q3" is not a KV cache type' in r.stderr and "q8_0" in r.stderr, r.stderr


def test_a_kv_cache_past_the_available_memory_is_refused_at_start_with_the_numbers():
    """Weights and KV that cannot fit the available memory: a clear error at start,
    before llama.cpp allocates anything (rather than an OOM kill later)."""
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    per_token = 30 * 3 * 64 * 2 * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 K and V
    ctx = 131_072
    parallel = -(-2 * available // (per_token * ctx))
    if parallel > 256:
        pytest.skip(f"{available >> 30} GiB available: no --parallel reaches twice that")
    t0 = time.monotonic()
    r = subprocess.run(
        [
            str(pensieve_bin()),
            "serve",
            "--model",
            str(model_path(SMOLLM2)),
            "--port",
            "0",
            "--ctx",
            str(ctx),
            "--parallel",
            str(parallel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0, r
    assert "the model does not fit in memory" in r.stderr and "is available" in r.stderr, r.stderr[-2000:]
    assert f"a KV cache of {parallel} x {ctx} tokens" in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t0 < 60


# --- 7. flash attention ------------------------------------------------------------------


def test_flash_attention_off_answers_and_keeps_its_snapshots_apart(tmp_path: Path):
    """`--flash-attn off` (faster decode on a CPU at long contexts) answers as llama.cpp's
    default does. Without flash attention llama.cpp stores V transposed, so a snapshot
    written by one is never offered to the other."""
    cache_dir = tmp_path / "kv"
    messages = [{"role": "user", "content": f"[{nonce()}] " + filler(200, seed=11)}]
    for asked, shown in (([], "auto"), (["--flash-attn", "off"], "off")):
        with serving("--cache-dir", str(cache_dir), *asked) as server:
            first = create(server, max_tokens=8, **T0, messages=messages)
            assert first.content[0].text, "no answer"
            assert first.usage.cache_read_input_tokens < 64, usage_str(first.usage)
            assert f"flash_attn={shown}" in server.log_tail(100_000)


def test_flash_attention_off_with_a_quantized_v_cache_is_refused_by_name():
    r = _serve_refused("--flash-attn", "off", "--cache-type-v", "q8_0")
    assert r.returncode != 0, r
    assert "a q8_0 V cache (--cache-type-v) needs flash attention, which --flash-attn turns off" in r.stderr, r.stderr
