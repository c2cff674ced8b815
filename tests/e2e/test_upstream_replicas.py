"""Two replicas behind `pensieve serve --upstream A --upstream B` (each a Pensieve serving
SmolLM2-135M over its OpenAI API), driven with the real anthropic SDK: a conversation sticks to
the replica whose prefix cache holds it, new conversations spread over both, and a replica
killed mid-stream costs its in-flight request a clean error, nothing more: new requests go to
the other, and the dead one is used again once it is back. The front's /health and /metrics
show each replica."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import anthropic
import httpx
import pytest
from conftest import SMOLLM2, Server, model_path, pensieve_bin, serve_front
from helpers import T0, scrape

# A system prompt long enough that a turn's new messages are a small part of its prompt.
SYSTEM = "You are a careful assistant for a software team. " + " ".join(
    f"Rule {i}: keep answers short, cite the file you changed, and never guess about code you have not read."
    for i in range(1, 41)
)


@pytest.fixture(scope="module")
def replicas():
    servers = [Server(model_path(SMOLLM2), ["--ctx", "4096"]) for _ in range(2)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.close()


@pytest.fixture(scope="module")
def front(replicas):
    args = []
    for r in replicas:
        args += ["--upstream", f"{r.url}/v1"]
    yield from serve_front([*args, "--upstream-model", "smollm2"])


@pytest.fixture(scope="module")
def client(front):
    return anthropic.Anthropic(base_url=front.url, api_key="anything", max_retries=0, timeout=120.0)


def answered(front: Server, replica: Server) -> float:
    """Requests the front has had answered by `replica`."""
    m = scrape(front.url)
    key = ("pensieve_upstream_requests_total", frozenset({("replica", f"{replica.url}/v1"), ("outcome", "ok")}))
    return m.samples.get(key, 0.0)


def states(front: Server) -> dict[str, str]:
    health = httpx.get(f"{front.url}/health", timeout=10).json()
    (upstream,) = health["upstreams"]
    return {r["url"]: r["state"] for r in upstream["replicas"]}


def ask(client, first: str, turns: int = 1) -> list:
    """`turns` turns of one conversation; each turn's response."""
    messages = [{"role": "user", "content": first}]
    out = []
    for turn in range(turns):
        r = client.messages.create(model="claude-opus-5-5", max_tokens=12, system=SYSTEM, messages=messages, **T0)
        out.append(r)
        text = "".join(b.text for b in r.content if b.type == "text") or "OK."
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"And step {turn + 2}?"}]
    return out


def test_health_shows_both_replicas_up(front, replicas):
    assert states(front) == {f"{r.url}/v1": "up" for r in replicas}
    m = scrape(front.url)
    for r in replicas:
        assert m.get("pensieve_upstream_up", replica=f"{r.url}/v1") == 1


def test_a_conversation_sticks_to_its_replica_and_reads_its_cache(front, replicas, client):
    before = [answered(front, r) for r in replicas]
    turns = ask(client, "Plan the refactoring of the parser module.", turns=3)
    after = [answered(front, r) for r in replicas]
    moved = [a - b for a, b in zip(after, before)]
    assert sorted(moved) == [0, 3], f"all three turns on one replica: {moved}"
    for n, r in enumerate(turns[1:], start=2):
        u = r.usage
        share = u.cache_read_input_tokens / (u.input_tokens + u.cache_read_input_tokens)
        assert share >= 0.9, f"turn {n}: {u}"


def test_new_conversations_spread_over_both(front, replicas, client):
    before = [answered(front, r) for r in replicas]
    for topic in ("the cache", "the scheduler", "the tokenizer", "the HTTP edge"):
        ask(client, f"Explain {topic} in one line.")
    moved = [a - b for a, b in zip([answered(front, r) for r in replicas], before)]
    assert sum(moved) == 4 and min(moved) >= 1, f"four new conversations, one at a time, take turns: {moved}"


def test_a_killed_replica_costs_only_its_own_requests(front, replicas, client):
    # A long answer, so that it is still streaming when its replica dies.
    counting = [{"role": "user", "content": "Count from 1 to 400, one number per line."}]
    with client.messages.stream(model="claude-opus-5-5", max_tokens=1500, messages=counting, **T0) as stream:
        events = iter(stream)
        for event in events:
            if event.type == "content_block_delta":
                break
        busy = [r for r in replicas if r.alive() and in_flight(front, r) > 0]
        assert len(busy) == 1, f"one replica streams: {states(front)}"
        dead = busy[0]
        dead.proc.kill()
        dead.proc.wait(timeout=10)
        with pytest.raises(anthropic.APIError) as failed:
            for _ in events:
                pass
    assert "stream" in str(failed.value).lower() or "upstream" in str(failed.value).lower(), failed.value
    alive = next(r for r in replicas if r is not dead)

    # New requests, the dead replica's own conversation among them, go to the other; none hangs.
    before = answered(front, alive)
    results: list = []
    again = dict(model="claude-opus-5-5", max_tokens=12, messages=counting, **T0)
    workers = [threading.Thread(target=lambda: results.append(client.messages.create(**again)))]
    workers += [threading.Thread(target=lambda t=t: results.append(ask(client, t))) for t in ("a colour", "a fruit")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert len(results) == 3 and not any(w.is_alive() for w in workers)
    assert answered(front, alive) - before == 3
    assert states(front)[f"{dead.url}/v1"] == "down"

    # Back on the same port: the next health check puts it in use again.
    dead.start()
    deadline = time.monotonic() + 30
    while states(front)[f"{dead.url}/v1"] != "up":
        assert time.monotonic() < deadline, f"still left out: {states(front)}"
        time.sleep(0.5)
    before = answered(front, dead)
    for topic in ("the disk cache", "the metrics"):
        ask(client, f"Explain {topic} in one line.")
    assert answered(front, dead) > before, "new conversations reach the replica that came back"


def in_flight(front: Server, replica: Server) -> int:
    health = httpx.get(f"{front.url}/health", timeout=10).json()
    (upstream,) = health["upstreams"]
    return next(r["in_flight"] for r in upstream["replicas"] if r["url"] == f"{replica.url}/v1")


def test_a_config_serves_a_local_model_beside_an_upstream_one(replicas, tmp_path, monkeypatch):
    """`[models.NAME] upstream = [...]`: the local main model and the upstream one side by side,
    each reached by its name or an alias, and `pensieve list` shows where the upstream one runs."""
    upstream = f"{replicas[0].url}/v1"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models.remote]\nupstream = ["{upstream}"]\nupstream_model = "smollm2"\n\n[aliases]\n"gpt-*" = "remote"\n'
    )
    monkeypatch.setenv("PENSIEVE_CONFIG", str(config))
    listed = subprocess.run(
        [str(pensieve_bin()), "list", "--json"], check=False, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    (remote,) = [e for e in json.loads(listed.stdout) if e["name"] == "remote"]
    assert (remote["format"], remote["upstream"], remote["upstream_model"]) == ("upstream", [upstream], "smollm2")

    server = Server(model_path(SMOLLM2), ["--ctx", "4096"])
    try:
        server.start()
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        assert "remote" in health["models"], health
        assert [u["model"] for u in health["upstreams"]] == ["remote"]
        client = anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=120.0)
        for model in ("remote", "gpt-5", "claude-opus-5-5"):
            r = client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}], **T0)
            assert r.content, model
        m = scrape(server.url)
        sent = m.samples.get(
            ("pensieve_upstream_requests_total", frozenset({("replica", upstream), ("outcome", "ok")})), 0.0
        )
        assert sent == 2, "remote and gpt-5 go upstream; the main model answers here"
    finally:
        server.close()
