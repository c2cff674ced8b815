"""Tool use with the real anthropic SDK against Qwen2.5-Coder-0.5B-Instruct, whose chat
template teaches the Hermes `<tool_call>` format: the calls come back as `tool_use`
blocks, streamed or not, and a tool result continues the conversation."""

from __future__ import annotations

import anthropic
import pytest
from conftest import QWEN_CODER, _serve
from helpers import QUESTION, T0, WEATHER_TOOL, after_the_call


@pytest.fixture(scope="module")
def qwen():
    yield from _serve(QWEN_CODER, ["--ctx", "4096"])


@pytest.fixture(scope="module")
def client(qwen):
    return anthropic.Anthropic(base_url=qwen.url, api_key="anything", max_retries=0, timeout=300.0)


def test_a_tool_call_is_a_tool_use_block(client, qwen):
    message = client.messages.create(model="qwen", max_tokens=128, tools=[WEATHER_TOOL], messages=QUESTION, **T0)
    assert message.stop_reason == "tool_use", f"{message}\n--- log ---\n{qwen.log_tail(3000)}"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1, message.content
    call = calls[0]
    assert call.name == "get_weather"
    assert call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and "paris" in str(call.input.get("city", "")).lower(), call.input
    for block in message.content:
        if block.type == "text":
            assert "<tool_call>" not in block.text and "</tool_call>" not in block.text


def test_a_streamed_call_arrives_as_input_json_deltas(client, qwen):
    kinds, fragments = [], []
    with client.messages.stream(model="qwen", max_tokens=128, tools=[WEATHER_TOOL], messages=QUESTION, **T0) as stream:
        for event in stream:
            if event.type == "content_block_start":
                kinds.append(event.content_block.type)
            elif event.type == "content_block_delta":
                if event.delta.type == "input_json_delta":
                    fragments.append(event.delta.partial_json)
                elif event.delta.type == "text_delta":
                    assert "<tool_call>" not in event.delta.text
        final = stream.get_final_message()
    assert "tool_use" in kinds, f"blocks {kinds}\n--- log ---\n{qwen.log_tail(3000)}"
    assert len(fragments) > 1, "the arguments came in one piece, not as they were generated"
    assert final.stop_reason == "tool_use"
    call = next(b for b in final.content if b.type == "tool_use")
    # The SDK parsed the fragments it accumulated: they make one JSON object.
    assert call.input.get("city", "").lower() == "paris", call.input


def test_a_tool_result_continues_the_conversation(client, qwen, on_gpu):
    first = client.messages.create(model="qwen", max_tokens=128, tools=[WEATHER_TOOL], messages=QUESTION, **T0)
    history = after_the_call(first, "Sunny, 22 degrees Celsius.")
    # Offered the tool again, this 0.5B model calls it again and again (greedy); with
    # `tool_choice: none` it has to answer from the result it was given.
    answer = client.messages.create(
        model="qwen", max_tokens=96, tools=[WEATHER_TOOL], tool_choice={"type": "none"}, messages=history, **T0
    )
    assert answer.stop_reason == "end_turn", answer
    assert all(b.type == "text" for b in answer.content), "tool_choice none offers no tools"
    text = "".join(b.text for b in answer.content)
    assert "22" in text, f"the answer does not use the tool result: {text!r}"
    # Without its tools the second prompt parts from the first early on. The CPU reuses the
    # shared part; a GPU reuses a prefix only where a computation stopped (results there
    # depend on the batch's shape), and here none did.
    if not on_gpu:
        assert answer.usage.cache_read_input_tokens > 0


def test_without_tools_the_model_just_talks(client):
    message = client.messages.create(model="qwen", max_tokens=32, messages=QUESTION, **T0)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in message.content)


FILE_TOOL = {
    "name": "write_file",
    "description": "Write text into a file.",
    "input_schema": {
        "type": "object",
        "properties": {
            "path": {"type": "string", "maxLength": 40},
            "content": {"type": "string", "maxLength": 80},
            "append": {"type": "boolean"},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    },
}
SAVE = [{"role": "user", "content": "Tell me a joke about cats."}]


@pytest.mark.parametrize(
    "model, tool_choice",
    [("smol", {"type": "any"}), ("qwen", {"type": "tool", "name": "write_file"})],
)
def test_a_forced_tool_call_matches_the_schema(model, tool_choice, request):
    """A prompt that asks for no tool, a tool_choice that demands one: the call is made,
    and its input validates against the tool's schema (constrained decoding)."""
    import jsonschema

    server = request.getfixturevalue("smol_server" if model == "smol" else "qwen")
    client = anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=300.0)
    message = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL, FILE_TOOL],
        tool_choice=tool_choice,
        messages=SAVE,
        **T0,
    )
    assert message.stop_reason == "tool_use", f"{message}\n--- log ---\n{server.log_tail(2000)}"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1, message.content
    call = calls[0]
    schema = {t["name"]: t["input_schema"] for t in (WEATHER_TOOL, FILE_TOOL)}[call.name]
    if tool_choice["type"] == "tool":
        assert call.name == "write_file"
    jsonschema.validate(call.input, schema)
