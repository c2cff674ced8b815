"""Requests an upstream takes as they are: OpenAI's chat and text completions relayed to the replica
(here a second Pensieve serving Qwen2.5-Coder-0.5B), and, with `--upstream-api anthropic`, Anthropic
requests passed to the replica's own /v1/messages. Driven with the real openai and anthropic SDKs;
the answers must match the replica's own, and its errors reach the client in the client's API."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from conftest import QWEN_CODER, _serve, serve_front
from helpers import QUESTION, T0, WEATHER_TOOL, scrape, text_of

COLOURS = [{"role": "user", "content": "Name three primary colours."}]
FUNCTION = {
    "type": "function",
    "function": {
        "name": WEATHER_TOOL["name"],
        "description": WEATHER_TOOL["description"],
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
# Longer than the replica's 4,096-token context: the replica's own error.
TOO_LONG = [{"role": "user", "content": "word " * 6000}]


@pytest.fixture(scope="module")
def backend():
    yield from _serve(QWEN_CODER, ["--ctx", "4096"])


@pytest.fixture(scope="module")
def upstream_id(backend):
    return httpx.get(f"{backend.url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def front(backend):
    yield from serve_front(["--upstream", f"{backend.url}/v1"])


@pytest.fixture(scope="module")
def anthropic_front(backend):
    yield from serve_front(["--upstream", f"{backend.url}/v1", "--upstream-api", "anthropic"])


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0, timeout=300.0)


def ant(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=300.0)


def test_chat_completions_are_relayed_as_the_replica_answers(front, backend, upstream_id):
    replica = f"{backend.url}/v1"
    before = scrape(front.url)
    ok_before = before.samples.get(
        ("pensieve_upstream_requests_total", frozenset({("replica", replica), ("outcome", "ok")})), 0
    )
    direct = oai(backend).chat.completions.create(model=upstream_id, messages=COLOURS, max_tokens=40, temperature=0)
    whole = oai(front).chat.completions.create(model="gpt-4o", messages=COLOURS, max_tokens=40, temperature=0)
    # Untranslated: the replica's own answer, under the replica's model name.
    assert whole.model == upstream_id
    assert whole.choices[0].message.content == direct.choices[0].message.content
    assert whole.usage.prompt_tokens == direct.usage.prompt_tokens

    stream = oai(front).chat.completions.create(
        model="gpt-4o",
        messages=COLOURS,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == direct.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == direct.usage.prompt_tokens
    # The relayed requests count in the replica's metrics, with the usage the stream carried.
    after = scrape(front.url)
    assert after.get("pensieve_upstream_requests_total", replica=replica, outcome="ok") == ok_before + 2
    assert after.get("pensieve_upstream_prompt_tokens_total", replica=replica) >= usage.prompt_tokens


def test_a_relayed_tool_call_and_text_completion(front, backend, upstream_id):
    call = oai(front).chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,
        tools=[FUNCTION],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=128,
        temperature=0,
    )
    assert call.choices[0].finish_reason in ("tool_calls", "stop"), call
    tool_call = call.choices[0].message.tool_calls[0]
    assert tool_call.function.name == "get_weather"
    assert "paris" in tool_call.function.arguments.lower()

    prompt = "def add(a, b):"
    direct = oai(backend).completions.create(model=upstream_id, prompt=prompt, max_tokens=16, temperature=0)
    relayed = oai(front).completions.create(model="anything", prompt=prompt, max_tokens=16, temperature=0)
    assert relayed.choices[0].text == direct.choices[0].text
    assert relayed.choices[0].text.strip()


def test_the_replicas_errors_reach_the_client_in_openais_shape(front):
    with pytest.raises(openai.BadRequestError) as caught:
        oai(front).chat.completions.create(model="gpt-4o", messages=TOO_LONG, max_tokens=8)
    assert "prompt is too long" in str(caught.value), caught.value
    # Streamed: the replica refuses before the stream starts, so the status is the error's.
    with pytest.raises(openai.BadRequestError) as caught:
        stream = oai(front).chat.completions.create(model="gpt-4o", messages=TOO_LONG, max_tokens=8, stream=True)
        list(stream)
    assert "prompt is too long" in str(caught.value), caught.value


def test_anthropic_requests_go_to_the_replicas_own_messages_api(anthropic_front, backend, upstream_id):
    client = ant(anthropic_front)
    direct = ant(backend).messages.create(model=upstream_id, max_tokens=40, messages=COLOURS, **T0)
    whole = client.messages.create(model="claude-opus-5-5", max_tokens=40, messages=COLOURS, **T0)
    # Untranslated: the replica answered under its own model name (the translating path echoes
    # the client's name instead).
    assert whole.model == upstream_id
    assert text_of(whole) == text_of(direct)
    with client.messages.stream(model="claude-opus-5-5", max_tokens=40, messages=COLOURS, **T0) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text_of(direct)
    assert final.usage.cache_read_input_tokens > 0, final.usage

    forced = {
        "max_tokens": 128,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": QUESTION,
        **T0,
    }
    with client.messages.stream(model="claude-opus-5-5", **forced) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        message = stream.get_final_message()
    assert "input_json_delta" in kinds
    assert message.stop_reason == "tool_use"
    assert next(b for b in message.content if b.type == "tool_use").name == "get_weather"

    # count_tokens: the replica's own count.
    counted = client.messages.count_tokens(model="claude-opus-5-5", messages=QUESTION)
    assert counted.input_tokens == ant(backend).messages.count_tokens(model=upstream_id, messages=QUESTION).input_tokens

    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="claude-opus-5-5", max_tokens=8, messages=TOO_LONG)
    assert "prompt is too long" in caught.value.message
