"""`pensieve serve --upstream URL`: Pensieve in front of another OpenAI-compatible server (here a
second Pensieve serving Qwen2.5-Coder-0.5B over its OpenAI API), driven with the real anthropic
SDK: text and tool calls, streamed or not, the upstream's usage and cache hits, and clean errors
when the upstream is gone."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from conftest import QWEN_CODER, Server, _serve, free_port, serve_front
from helpers import QUESTION, T0, WEATHER_TOOL, after_the_call

# A call Qwen must make (constrained by the upstream's grammar).
FORCED = {
    "model": "claude-opus-5-5",
    "max_tokens": 128,
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "tool", "name": "get_weather"},
    "messages": QUESTION,
    **T0,
}


@pytest.fixture(scope="module")
def backend():
    yield from _serve(QWEN_CODER, ["--ctx", "4096"])


@pytest.fixture(scope="module")
def front(backend):
    yield from serve_front(["--upstream", f"{backend.url}/v1"])


@pytest.fixture(scope="module")
def client(front):
    return anthropic.Anthropic(base_url=front.url, api_key="anything", max_retries=0, timeout=300.0)


def test_the_upstream_model_is_discovered_and_shown(front, backend):
    health = httpx.get(f"{front.url}/health").json()
    upstream_id = httpx.get(f"{backend.url}/v1/models").json()["data"][0]["id"]
    assert health["model"] == upstream_id
    assert health["runs_on"] == f"upstream {backend.url}/v1"


def test_a_message_and_its_stream_say_the_same(client):
    messages = [{"role": "user", "content": "Name three primary colours."}]
    whole = client.messages.create(model="claude-opus-5-5", max_tokens=40, messages=messages, **T0)
    assert whole.model == "claude-opus-5-5"
    assert whole.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in whole.content if b.type == "text")
    assert text.strip()
    assert whole.usage.input_tokens + whole.usage.cache_read_input_tokens > 10
    assert whole.usage.output_tokens > 0

    with client.messages.stream(model="claude-opus-5-5", max_tokens=40, messages=messages, **T0) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text, "greedy, so the same answer"
    assert final.stop_reason == whole.stop_reason
    # The upstream's prefix cache: the repeat reads the prompt from it.
    assert final.usage.cache_read_input_tokens > 0, final.usage


def test_a_forced_tool_call_comes_back_as_tool_use(client):
    message = client.messages.create(**FORCED)
    assert message.stop_reason == "tool_use", message
    call = next(b for b in message.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert "paris" in str(call.input.get("city", "")).lower(), call.input

    with client.messages.stream(**FORCED) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in kinds
    assert final.stop_reason == "tool_use"
    assert next(b for b in final.content if b.type == "tool_use").input == call.input


def test_a_tool_result_continues_the_conversation(client):
    first = client.messages.create(**FORCED)
    history = after_the_call(first, "Sunny, 22 degrees Celsius.")
    answer = client.messages.create(
        model="claude-opus-5-5",
        max_tokens=96,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "none"},
        messages=history,
        **T0,
    )
    assert answer.stop_reason == "end_turn", answer
    text = "".join(b.text for b in answer.content if b.type == "text")
    assert "22" in text, text


def test_count_tokens_says_it_cannot(front):
    r = httpx.post(
        f"{front.url}/v1/messages/count_tokens",
        json={"model": "claude-opus-5-5", "messages": QUESTION},
    )
    assert r.status_code == 400
    assert "upstream" in r.json()["error"]["message"]


def test_an_upstream_that_is_gone_is_a_clean_error():
    # Nothing listens there; the model name is given, so Pensieve starts without asking.
    gone = f"http://127.0.0.1:{free_port()}/v1"
    for server in serve_front(["--upstream", gone, "--upstream-model", "m"]):
        client = anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=30.0)
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(model="m", max_tokens=8, messages=QUESTION)
        assert caught.value.status_code == 529
        assert "no upstream replica" in caught.value.message
        # Streamed: the error comes as the stream's error event, and the stream ends.
        with (
            pytest.raises(anthropic.APIStatusError),
            client.messages.stream(model="m", max_tokens=8, messages=QUESTION) as stream,
        ):
            for _ in stream:
                pass


def test_an_unreachable_upstream_at_start_is_a_clear_startup_error():
    gone = f"http://127.0.0.1:{free_port()}/v1"
    server = Server(None, ["--upstream", gone])
    try:
        with pytest.raises(pytest.fail.Exception) as caught:
            server.start()
        assert "cannot list the upstream's models" in str(caught.value)
    finally:
        server.close()
