"""Today's tool-call formats end to end, with the real anthropic SDK. No test model has
the vocabulary of Qwen3-Coder or GLM, so Qwen2.5-Coder-0.5B (the Qwen tokenizer family,
whose `<tool_call>` is one token) serves under the real chat templates of Qwen3-Coder
and GLM-4.7-Flash (`--chat-template`, the fixtures in the engine's template tests).

- Forced calls of Claude Code's own tools (captured from the real client) come back as
  `tool_use` blocks whose input validates against the tool's schema, streamed and not.
- Under `tool_choice: auto` the model's own calls come back the same way, and a tool
  result continues the conversation. This model writes both formats without the call's
  opening marker, as users report of real Qwen and GLM models: Qwen3-Coder's XML as a
  bare `<function=...>`, and GLM's as the tool's name followed by `<arg_key>`. Under
  GLM-4.7-Flash's template it ends its turn at once when not forced, so GLM's auto calls
  run under GLM-4.6's template (same format family, the newline layout) with thinking on,
  where it does call.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import jsonschema
import pytest
from conftest import QWEN_CODER, _serve

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SRC = ROOT / "crates" / "pensieve-engine" / "src"
TEMPLATES = ENGINE_SRC / "template" / "fixtures"
CLAUDE_CODE_TOOLS = json.loads((ENGINE_SRC / "constrain" / "fixtures" / "claude_code_tools.json").read_text())
SCHEMAS = {t["name"]: t["input_schema"] for t in CLAUDE_CODE_TOOLS}

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "Use the get_weather tool to find the weather in Paris."}]
T0 = {"extra_body": {"temperature": 0}}


def serve_with(template: str):
    # Claude Code's 12 tools are ~10k tokens of prompt under these templates.
    yield from _serve(QWEN_CODER, ["--ctx", "16384", "--chat-template", str(TEMPLATES / template)])


@pytest.fixture(scope="module")
def qwen3_coder():
    yield from serve_with("qwen3-coder.jinja")


@pytest.fixture(scope="module")
def glm47():
    yield from serve_with("glm-4.7-flash.jinja")


@pytest.fixture(scope="module")
def glm45():
    yield from serve_with("glm-4.6.jinja")


# What each auto-call server needs: GLM-4.6's template only gets a call out of this
# model with thinking on.
AUTO = {
    "qwen3_coder": T0,
    "glm45": {"extra_body": {"temperature": 0}, "thinking": {"type": "adaptive"}},
}


def client_for(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=900.0)


def no_markers(text: str) -> None:
    for marker in ("<tool_call>", "</tool_call>", "<function=", "<parameter=", "<arg_key>", "<arg_value>"):
        assert marker not in text, text


def check_call(message, name: str, server) -> dict:
    report = f"{message}\n--- log ---\n{server.log_tail(3000)}"
    assert message.stop_reason == "tool_use", report
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1, report
    assert calls[0].name == name, report
    for block in message.content:
        if block.type == "text":
            no_markers(block.text)
    return calls[0].input


@pytest.mark.parametrize("server_name", ["qwen3_coder", "glm47"])
@pytest.mark.parametrize("tool", ["Bash", "Read", "Write"])
def test_forced_claude_code_calls_match_their_schema(server_name, tool, request):
    server = request.getfixturevalue(server_name)
    message = client_for(server).messages.create(
        model="claude-opus-5-5",
        max_tokens=256,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "tool", "name": tool},
        messages=[{"role": "user", "content": "Show me what is in the project's README."}],
        **T0,
    )
    jsonschema.validate(check_call(message, tool, server), SCHEMAS[tool])


@pytest.mark.parametrize("server_name", ["qwen3_coder", "glm47"])
def test_a_streamed_forced_call_arrives_as_input_json_deltas(server_name, request):
    server = request.getfixturevalue(server_name)
    fragments = []
    with client_for(server).messages.stream(
        model="claude-opus-5-5",
        max_tokens=256,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "List the files in this directory."}],
        **T0,
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.append(event.delta.partial_json)
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                no_markers(event.delta.text)
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert final.stop_reason == "tool_use", final
    assert len(fragments) > 1, "the arguments came in one piece, not as they were generated"
    # The SDK parsed what it accumulated; it fits the tool the model chose.
    jsonschema.validate(call.input, SCHEMAS[call.name])


@pytest.mark.parametrize("server_name", AUTO)
def test_an_auto_call_is_a_tool_use_block(server_name, request):
    server = request.getfixturevalue(server_name)
    message = client_for(server).messages.create(
        model="qwen", max_tokens=128, tools=[WEATHER_TOOL], messages=ASK, **AUTO[server_name]
    )
    call = check_call(message, "get_weather", server)
    jsonschema.validate(call, WEATHER_TOOL["input_schema"])
    assert call["city"].lower() == "paris", call
    # Typed by the schema: `days`, when the model gives it, is a number, not text.
    assert isinstance(call.get("days", 1), int), call


@pytest.mark.parametrize("server_name", AUTO)
def test_an_auto_call_streams_and_a_result_continues_the_conversation(server_name, request):
    server = request.getfixturevalue(server_name)
    client = client_for(server)
    settings = AUTO[server_name]
    with client.messages.stream(model="qwen", max_tokens=128, tools=[WEATHER_TOOL], messages=ASK, **settings) as stream:
        kinds = [e.content_block.type for e in stream if e.type == "content_block_start"]
        first = stream.get_final_message()
    assert "tool_use" in kinds, f"{first}\n--- log ---\n{server.log_tail(3000)}"
    call = next(b for b in first.content if b.type == "tool_use")
    history = ASK + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 22 degrees Celsius."}],
        },
    ]
    # The call and its result render back through the template; the model answers from
    # the result or calls again (a 0.5B model often does), but either way well-formed.
    answer = client.messages.create(model="qwen", max_tokens=96, tools=[WEATHER_TOOL], messages=history, **settings)
    assert answer.stop_reason in ("end_turn", "tool_use"), answer
    for block in answer.content:
        if block.type == "text":
            no_markers(block.text)
        else:
            jsonschema.validate(block.input, WEATHER_TOOL["input_schema"])
    assert answer.usage.cache_read_input_tokens > 0
