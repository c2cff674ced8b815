"""The Anthropic Messages API as the official `anthropic` Python SDK sees it,
against the real binary serving SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import time
import uuid

import anthropic
import httpx
import pytest
from conftest import REQUESTED_MODEL
from helpers import (
    BILLING_LINE,
    REQUEST_ID_RE,
    TOO_LONG_RE,
    assert_error_shape,
    iter_sse,
    prompt_total,
    text_of,
)

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
STOP_REASONS = {"end_turn", "max_tokens"}
# The SDK (2.x) no longer has typed sampling parameters: they go in the body as is.
T0 = {"extra_body": {"temperature": 0}}


def fresh(text: str) -> str:
    """A prompt no earlier request shared a prefix with (defeats any prefix cache)."""
    return f"[{uuid.uuid4().hex[:8]}] {text}"


# --- basic endpoints -----------------------------------------------------------


def test_health_and_head_root(http):
    r = http.get("/health")
    assert r.status_code == 200, r.text
    r = http.head("/")
    assert r.status_code == 200


def test_unknown_route_is_404_envelope(http):
    r = http.get("/v1/nope")
    assert_error_shape(r, 404, "not_found_error")


# --- non-streaming -----------------------------------------------------------


def test_create_non_streaming(client):
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=32, **T0, messages=HELLO)
    assert msg.id.startswith("msg_"), msg.id
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model == REQUESTED_MODEL
    assert len(msg.content) >= 1
    assert msg.content[0].type == "text"
    assert text_of(msg).strip(), msg
    assert msg.stop_reason in STOP_REASONS, msg.stop_reason
    assert msg.stop_sequence is None
    assert msg.usage.input_tokens > 0
    assert 0 < msg.usage.output_tokens <= 32
    assert msg._request_id and REQUEST_ID_RE.match(msg._request_id), msg._request_id


def test_other_model_names_are_echoed(client):
    for name in ("claude-haiku-4-5", "claude-sonnet-4-5[1m]", "my-local-model"):
        msg = client.messages.create(model=name, max_tokens=4, messages=HELLO)
        assert msg.model == name


def test_max_tokens_one(client):
    msg = client.messages.create(
        model=REQUESTED_MODEL,
        max_tokens=1,
        messages=[{"role": "user", "content": "Write a long story about a dragon who learns to fly."}],
    )
    assert msg.stop_reason == "max_tokens", msg
    assert msg.usage.output_tokens == 1, msg.usage


def test_temperature_zero_is_deterministic(client):
    kwargs = dict(
        model=REQUESTED_MODEL,
        max_tokens=40,
        **T0,
        messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
    )
    first = client.messages.create(**kwargs)
    second = client.messages.create(**kwargs)
    assert text_of(first).strip()
    assert text_of(first) == text_of(second)
    assert first.usage.output_tokens == second.usage.output_tokens


def test_sampling_parameters_accepted(client):
    msg = client.messages.create(
        model=REQUESTED_MODEL,
        max_tokens=8,
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 40},
        metadata={"user_id": json.dumps({"device_id": "abc", "session_id": "def"})},
        messages=HELLO,
    )
    assert msg.usage.output_tokens > 0


COUNT_PROMPT = [
    {
        "role": "user",
        "content": "Count from 1 to 10. Write only the numbers, separated by commas.",
    }
]


def test_stop_sequences(client):
    kwargs = dict(model=REQUESTED_MODEL, max_tokens=60, **T0, messages=COUNT_PROMPT)
    full = text_of(client.messages.create(**kwargs))
    assert "3" in full, f"the model did not count (test premise): {full!r}"

    msg = client.messages.create(**kwargs, stop_sequences=["3"])
    text = text_of(msg)
    assert msg.stop_reason == "stop_sequence", msg
    assert msg.stop_sequence == "3", msg
    assert "3" not in text, text
    # The text is the unstopped answer cut right before the stop sequence.
    assert full.startswith(text), (full, text)
    assert text.rstrip() == full[: full.index("3")].rstrip(), (full, text)


def test_stop_sequence_streaming(client):
    with client.messages.stream(
        model=REQUESTED_MODEL, max_tokens=60, **T0, messages=COUNT_PROMPT, stop_sequences=["3"]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence", final
    assert final.stop_sequence == "3"
    assert "3" not in text_of(final)


# --- streaming ---------------------------------------------------------------


def test_stream_get_final_message(client):
    with client.messages.stream(model=REQUESTED_MODEL, max_tokens=32, **T0, messages=HELLO) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.id.startswith("msg_")
    assert final.model == REQUESTED_MODEL
    assert final.role == "assistant"
    assert text_of(final).strip()
    assert streamed_text == text_of(final)
    assert final.stop_reason in STOP_REASONS
    assert final.usage.input_tokens > 0
    assert 0 < final.usage.output_tokens <= 32

    # Same request, not streamed, at temperature 0: same answer.
    plain = client.messages.create(model=REQUESTED_MODEL, max_tokens=32, **T0, messages=HELLO)
    assert text_of(plain) == text_of(final)


def _check_event_order(events: list) -> str:
    """Check the order rules of a stream of SDK events; returns the streamed text."""
    types = [e.type for e in events]
    assert types[0] == "message_start", types
    assert types[-1] == "message_stop", types
    assert types.count("message_start") == 1 and types.count("message_stop") == 1, types
    assert types.count("message_delta") == 1, types

    start = events[0].message
    assert start.id.startswith("msg_")
    assert start.type == "message" and start.role == "assistant"
    assert start.model == REQUESTED_MODEL
    assert start.content == []
    assert start.stop_reason is None
    assert start.usage.input_tokens > 0, start.usage

    open_index = None
    next_index = 0
    text = ""
    seen_delta = False
    for e in events[1:-1]:
        if e.type == "content_block_start":
            assert not seen_delta, "content block after message_delta"
            assert open_index is None, "two blocks open at once"
            assert e.index == next_index, (e.index, next_index)
            if e.content_block.type == "text":
                assert e.content_block.text == ""
            open_index = e.index
            next_index += 1
        elif e.type == "content_block_delta":
            assert e.index == open_index, (e.index, open_index)
            if e.delta.type == "text_delta":
                text += e.delta.text
        elif e.type == "content_block_stop":
            assert e.index == open_index, (e.index, open_index)
            open_index = None
        elif e.type == "message_delta":
            assert open_index is None, "message_delta while a block is open"
            assert e.delta.stop_reason in STOP_REASONS | {"stop_sequence"}
            assert e.usage.output_tokens > 0, e.usage
            seen_delta = True
        else:
            pytest.fail(f"unexpected event {e.type}")
    assert open_index is None
    assert next_index >= 1, "no content block"
    assert seen_delta
    return text


def test_stream_raw_event_order(client):
    stream = client.messages.create(model=REQUESTED_MODEL, max_tokens=32, **T0, messages=HELLO, stream=True)
    events = list(stream)
    text = _check_event_order(events)
    assert text.strip()


def test_stream_wire_format(http):
    """SSE framing as the SDKs parse it: `event: <type>` matching data.type; headers."""
    body = {"model": REQUESTED_MODEL, "max_tokens": 16, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        assert "no-cache" in r.headers.get("cache-control", ""), r.headers
        assert REQUEST_ID_RE.match(r.headers.get("request-id", "")), r.headers
        events = list(iter_sse(r))
    names = [name for name, _ in events]
    for name, data in events:
        assert name is not None, f"data without an event: line: {data}"
        assert data.get("type") == name, (name, data)
        if name == "ping":
            assert data == {"type": "ping"}
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    delta = [d for n, d in events if n == "message_delta"][0]
    assert "stop_reason" in delta["delta"] and "stop_sequence" in delta["delta"], delta
    assert delta["usage"]["output_tokens"] > 0
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0


# --- count_tokens --------------------------------------------------------------


def test_count_tokens_matches_usage(client):
    messages = [{"role": "user", "content": fresh("What is the capital of France?")}]
    system = "You are a terse geography assistant."
    counted = client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages, system=system)
    assert counted.input_tokens > 0
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=messages, system=system)
    assert prompt_total(msg.usage) == counted.input_tokens, (msg.usage, counted)
    # And the stream's message_start reports the same.
    events = list(
        client.messages.create(model=REQUESTED_MODEL, max_tokens=2, messages=messages, system=system, stream=True)
    )
    assert prompt_total(events[0].message.usage) == counted.input_tokens, events[0].message.usage


def test_count_tokens_content_string_equals_blocks(client):
    as_string = client.messages.count_tokens(
        model=REQUESTED_MODEL, messages=[{"role": "user", "content": "Hello there"}]
    )
    as_blocks = client.messages.count_tokens(
        model=REQUESTED_MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    )
    assert as_string.input_tokens == as_blocks.input_tokens
    longer = client.messages.count_tokens(
        model=REQUESTED_MODEL,
        messages=[{"role": "user", "content": "Hello there, how are you doing on this fine day?"}],
    )
    assert longer.input_tokens > as_string.input_tokens


def test_system_string_and_blocks_with_billing_line(client):
    system_text = "You are a helpful assistant. Answer briefly."
    as_string = client.messages.count_tokens(model=REQUESTED_MODEL, messages=HELLO, system=system_text)
    as_block = client.messages.count_tokens(
        model=REQUESTED_MODEL, messages=HELLO, system=[{"type": "text", "text": system_text}]
    )
    with_billing = client.messages.count_tokens(
        model=REQUESTED_MODEL,
        messages=HELLO,
        system=[
            {"type": "text", "text": BILLING_LINE},
            {"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}},
        ],
    )
    # (Not compared with no system at all: a chat template may insert a default system prompt.)
    longer = client.messages.count_tokens(
        model=REQUESTED_MODEL, messages=HELLO, system=system_text + " Never use more than ten words per answer."
    )
    assert as_string.input_tokens == as_block.input_tokens
    assert with_billing.input_tokens == as_block.input_tokens, "the billing line must not reach the model"
    assert longer.input_tokens > as_string.input_tokens, "the system prompt is not in the prompt"

    msg = client.messages.create(
        model=REQUESTED_MODEL,
        max_tokens=16,
        messages=HELLO,
        system=[
            {"type": "text", "text": BILLING_LINE},
            {"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}},
        ],
    )
    assert text_of(msg).strip()
    assert prompt_total(msg.usage) == with_billing.input_tokens


def test_role_system_inside_messages(client):
    def count(**kw):
        return client.messages.count_tokens(model=REQUESTED_MODEL, **kw).input_tokens

    note = "Always answer in French."
    # Claude Code's shape: a system turn right after the user's prompt. It reaches the
    # prompt above the user turn, exactly as if it had been sent as `system`.
    base = [{"role": "user", "content": "Say hello."}]
    with_system = base + [{"role": "system", "content": note}]
    n_sys = count(messages=with_system)
    assert n_sys == count(system=note, messages=base), "a role: system message must be placed in the prompt"
    # Later in a conversation, a system turn adds to the prompt where it stands.
    convo = base + [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again."}]
    mid = convo[:2] + [{"role": "system", "content": note}] + convo[2:]
    assert count(messages=mid) > count(messages=convo)
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=16, messages=with_system)
    assert msg.role == "assistant"
    assert msg.usage.output_tokens > 0
    assert prompt_total(msg.usage) == n_sys


def test_unknown_top_level_fields_ignored(client):
    msg = client.messages.create(
        model=REQUESTED_MODEL,
        max_tokens=8,
        messages=HELLO,
        thinking={"type": "adaptive"},
        extra_body={
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "medium"},
            "service_tier": "auto",
            "some_future_field": {"x": 1},
        },
        extra_headers={
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
            "x-app": "cli",
            "x-claude-code-session-id": str(uuid.uuid4()),
        },
    )
    assert msg.type == "message"
    assert msg.usage.output_tokens > 0


def test_thinking_variants_accepted(client):
    # Anthropic wants max_tokens above the budget; the stop sequence keeps the reply short.
    for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}):
        msg = client.messages.create(
            model=REQUESTED_MODEL, max_tokens=1025, messages=HELLO, thinking=thinking, stop_sequences=["."]
        )
        assert msg.type == "message"


def test_beta_query_string(client, http):
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=HELLO, extra_query={"beta": "true"})
    assert msg.type == "message"
    r = http.post("/v1/messages?beta=true", json={"model": REQUESTED_MODEL, "max_tokens": 8, "messages": HELLO})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"
    r = http.post("/v1/messages/count_tokens?beta=true", json={"model": REQUESTED_MODEL, "messages": HELLO})
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] > 0


def test_max_tokens_beyond_context_is_clamped(http):
    """Claude Code asks for max_tokens 32000-128000: clamp, never reject. Streamed and
    abandoned after the first text, so the test does not wait for 8k tokens."""
    body = {"model": REQUESTED_MODEL, "max_tokens": 128000, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as r:
        assert r.status_code == 200, r.read()
        for name, data in iter_sse(r):
            if name == "error":
                pytest.fail(f"error event: {data}")
            if name == "content_block_delta" or name == "message_stop":
                break


# --- models ------------------------------------------------------------------


def test_models_list_and_retrieve(client):
    page = client.models.list()
    models = list(page.data)
    assert models, "no models listed"
    for m in models:
        assert m.type == "model"
        assert m.id
        assert m.display_name
        assert m.created_at
    got = client.models.retrieve(models[0].id)
    assert got.id == models[0].id
    assert got.type == "model"


def test_models_list_wire_shape(http):
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["has_more"] is False
    assert body["first_id"] == body["data"][0]["id"]
    assert body["last_id"] == body["data"][-1]["id"]


def test_retrieve_unknown_model_not_found(client, http):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.models.retrieve("no-such-model-xyz")
    assert info.value.status_code == 404
    assert_error_shape(http.get("/v1/models/no-such-model-xyz"), 404, "not_found_error")


# --- errors --------------------------------------------------------------------


def test_missing_max_tokens_is_400(client, http):
    body = {"model": REQUESTED_MODEL, "messages": HELLO}
    r = http.post("/v1/messages", json=body)
    err = assert_error_shape(r, 400, "invalid_request_error")
    assert "max_tokens" in err["error"]["message"], err
    # The same through the SDK's raw request path (its typed method enforces max_tokens itself).
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body=body, cast_to=object)
    assert info.value.type == "invalid_request_error"
    assert info.value.request_id and REQUEST_ID_RE.match(info.value.request_id)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"messages": []}, "messages: at least one message is required"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"top_p": -0.5}, "top_p: Input should be greater than or equal to 0"),
        ({"max_tokens": "8"}, "max_tokens: invalid type"),
        ({"top_k": -1}, "top_k: invalid value"),
        ({"tools": [{"name": "get weather", "input_schema": {"type": "object"}}]}, "tools.0.name"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name: Field required"),
        ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "max_tokens: must be greater than"),
        ({"system": [{"type": "image", "source": {}}]}, "system.0.type"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ],
)
def test_values_the_api_refuses_are_400(client, extra, message):
    """What Anthropic's API refuses is refused here too, not answered with a generation."""
    body = {"model": REQUESTED_MODEL, "max_tokens": 8, "messages": HELLO, **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body=body, cast_to=object)
    assert info.value.type == "invalid_request_error"
    assert message in str(info.value), info.value


@pytest.mark.parametrize(
    "body, field",
    [
        ({"max_tokens": 8, "messages": HELLO}, "model"),
        ({"model": REQUESTED_MODEL, "max_tokens": 8}, "messages"),
        ({"model": REQUESTED_MODEL, "max_tokens": "eight", "messages": HELLO}, "max_tokens"),
    ],
)
def test_invalid_requests_are_400(http, body, field):
    err = assert_error_shape(http.post("/v1/messages", json=body), 400, "invalid_request_error")
    assert field in err["error"]["message"], err


def test_malformed_json_is_400(http):
    r = http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert_error_shape(r, 400, "invalid_request_error")


def test_prompt_too_long_small_ctx(small_ctx_server):
    client = anthropic.Anthropic(base_url=small_ctx_server.url, api_key="x", max_retries=0, timeout=60.0)
    long_text = "The quick brown fox jumps over the lazy dog. " * 150  # ~1,500 tokens > 512
    messages = [{"role": "user", "content": long_text}]
    started = time.monotonic()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=REQUESTED_MODEL, max_tokens=16, messages=messages)
    assert time.monotonic() - started < 30, "rejecting an over-long prompt must be quick"
    err = info.value
    assert err.type == "invalid_request_error"
    m = TOO_LONG_RE.search(err.api_message or "")
    assert m, err.api_message
    n, limit = int(m.group(1)), int(m.group(2))
    assert n > limit and limit <= 512, (n, limit)
    # The count matches count_tokens (which itself must not fail on a long prompt).
    counted = client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages).input_tokens
    assert n == counted, (n, counted)

    # Streaming: still the same error, before any event (Claude Code must see the wording).
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=REQUESTED_MODEL, max_tokens=16, messages=messages) as s:
            s.get_final_message()
    assert isinstance(info.value, anthropic.BadRequestError), f"streamed overflow should be a 400, got {info.value!r}"
    assert TOO_LONG_RE.search(info.value.api_message or str(info.value)), info.value

    # A short prompt still works on this server.
    ok = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO)
    assert ok.usage.output_tokens > 0


def test_prompt_too_long_default_ctx(client):
    """The default context is the model's own (8k for SmolLM2): a 20k-token prompt is rejected, not truncated."""
    messages = [{"role": "user", "content": "hello " * 20000}]
    started = time.monotonic()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=REQUESTED_MODEL, max_tokens=16, messages=messages, timeout=60.0)
    assert time.monotonic() - started < 30
    m = TOO_LONG_RE.search(info.value.api_message or "")
    assert m, info.value.api_message
    assert int(m.group(1)) > int(m.group(2))


def test_huge_max_tokens_non_streaming_is_clamped(client):
    """max_tokens far beyond the context is clamped, not rejected (non-streaming)."""
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=100000, messages=HELLO, stop_sequences=["."], **T0)
    assert msg.stop_reason in {"stop_sequence", "end_turn", "max_tokens"}


def test_body_over_limit_is_413(smol_server):
    payload = json.dumps(
        {"model": REQUESTED_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "a" * (40 << 20)}]}
    ).encode()
    try:
        r = httpx.post(
            f"{smol_server.url}/v1/messages",
            content=payload,
            headers={"content-type": "application/json"},
            timeout=60.0,
        )
    except httpx.HTTPError as e:
        pytest.fail(f"a 40 MiB body must get a 413 answer, the connection failed instead: {e!r}")
    assert_error_shape(r, 413, "request_too_large")
    # Still serving.
    assert httpx.get(f"{smol_server.url}/health", timeout=10).status_code == 200


def test_request_id_header_everywhere(http, client):
    for r in (
        http.get("/v1/models"),
        http.post("/v1/messages/count_tokens", json={"model": REQUESTED_MODEL, "messages": HELLO}),
        http.post("/v1/messages", json={"model": REQUESTED_MODEL, "messages": HELLO}),
    ):
        assert REQUEST_ID_RE.match(r.headers.get("request-id", "")), (r.status_code, dict(r.headers))
    raw = client.messages.with_raw_response.create(model=REQUESTED_MODEL, max_tokens=2, messages=HELLO)
    assert REQUEST_ID_RE.match(raw.headers.get("request-id", ""))


# --- auth --------------------------------------------------------------------


def test_auth_wrong_key_rejected(auth_server):
    bad = anthropic.Anthropic(base_url=auth_server.url, api_key="wrong", max_retries=0, timeout=60.0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.type == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model=REQUESTED_MODEL, messages=HELLO)
    with pytest.raises(anthropic.AuthenticationError):
        bad.models.list()
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO, stream=True)

    r = httpx.post(
        f"{auth_server.url}/v1/messages", json={"model": REQUESTED_MODEL, "max_tokens": 4, "messages": HELLO}
    )
    assert_error_shape(r, 401, "authentication_error")
    r = httpx.post(
        f"{auth_server.url}/v1/messages",
        json={"model": REQUESTED_MODEL, "max_tokens": 4, "messages": HELLO},
        headers={"authorization": "Bearer wrong"},
    )
    assert_error_shape(r, 401, "authentication_error")


def test_auth_x_api_key_accepted(auth_server):
    good = anthropic.Anthropic(base_url=auth_server.url, api_key="secret", max_retries=0, timeout=120.0)
    msg = good.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO)
    assert msg.usage.output_tokens > 0
    assert good.messages.count_tokens(model=REQUESTED_MODEL, messages=HELLO).input_tokens > 0
    assert list(good.models.list().data)


def test_auth_bearer_accepted(auth_server):
    good = anthropic.Anthropic(
        base_url=auth_server.url, api_key=None, auth_token="secret", max_retries=0, timeout=120.0
    )
    msg = good.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO)
    assert msg.usage.output_tokens > 0
    with good.messages.stream(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO) as s:
        assert s.get_final_message().usage.output_tokens > 0


# --- disconnects -------------------------------------------------------------


def test_stream_client_disconnect_frees_server(smol_server, client):
    """Open a long stream, read a few events, hang up: the server must stop generating
    for it and answer the next request promptly."""
    body = {
        "model": REQUESTED_MODEL,
        "max_tokens": 4000,
        "temperature": 1.0,
        "messages": [
            {"role": "user", "content": fresh("Write a very long, detailed story about a sailor. Use many chapters.")}
        ],
        "stream": True,
    }

    def next_request_seconds() -> float:
        started = time.monotonic()
        msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=HELLO, timeout=120.0)
        assert msg.usage.output_tokens > 0
        return time.monotonic() - started

    baseline = next_request_seconds()
    deltas = 0
    with httpx.Client(base_url=smol_server.url, timeout=120.0) as c:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200
            for name, _ in iter_sse(r):
                if name == "content_block_delta":
                    deltas += 1
                    if deltas >= 3:
                        break
    assert deltas >= 3, "stream ended before three text deltas"
    # The connection is closed now. Generating the 4,000 tokens would take about a
    # minute: the next request must not wait for them.
    elapsed = next_request_seconds()
    assert elapsed < baseline + 10, (
        f"next request took {elapsed:.1f}s (baseline {baseline:.1f}s): the abandoned stream kept generating?"
    )
    assert smol_server.alive()


def test_server_survives_everything(smol_server, client):
    """Runs late (file order): the session server is still up and answering."""
    assert smol_server.alive(), smol_server.log_tail()
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=HELLO)
    assert msg.usage.output_tokens > 0
