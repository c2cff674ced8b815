"""The OpenAI Responses API (`/v1/responses`) with the real `openai` SDK against the real
binary: plain and streamed responses with their event sequence and usage, max_output_tokens
as `incomplete`, instructions, function calls (forced, streamed, and a round trip through
`function_call_output`), `text.format` json_schema output that validates, stored responses
(`previous_response_id`, `store: false`, GET and DELETE), and errors in OpenAI's shape."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from conftest import QWEN_CODER, _serve

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}


@pytest.fixture(scope="module")
def smol(smol_server):
    return openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="anything", max_retries=0, timeout=180.0)


@pytest.fixture(scope="module")
def qwen_server():
    yield from _serve(QWEN_CODER, ["--ctx", "4096"])


@pytest.fixture(scope="module")
def qwen(qwen_server):
    return openai.OpenAI(base_url=f"{qwen_server.url}/v1", api_key="anything", max_retries=0, timeout=300.0)


def test_a_response(smol):
    r = smol.responses.create(model="smol", input="Say hello.", instructions="You are terse.", temperature=0)
    assert r.object == "response"
    assert r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.model == "smol"
    assert r.instructions == "You are terse."
    assert [item.type for item in r.output] == ["message"]
    message = r.output[0]
    assert message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text"
    assert r.output_text.strip()
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0


def test_max_output_tokens_makes_it_incomplete(smol):
    r = smol.responses.create(
        model="smol", input="Count from one to one hundred in words.", max_output_tokens=8, temperature=0
    )
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 8
    assert r.output_text


def test_a_streamed_response_follows_the_event_sequence(smol):
    events = []
    with smol.responses.stream(model="smol", input="Write one sentence about the sea.", temperature=0) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "".join(deltas) == final.output_text
    order = [k for k in kinds if not k.endswith(".delta")]
    assert order == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.status == "completed"
    assert final.usage.output_tokens >= 1


def test_a_conversation_continues_from_a_stored_response(smol, smol_server):
    first = smol.responses.create(
        model="smol", input="My name is Ada. Reply with OK.", temperature=0, max_output_tokens=8
    )
    again = smol.responses.create(
        model="smol", previous_response_id=first.id, input="What is my name?", temperature=0, max_output_tokens=16
    )
    assert again.previous_response_id == first.id
    # The earlier turn is in the prompt: more input than the new question alone, most of it
    # read from the prefix cache.
    alone = smol.responses.create(model="smol", input="What is my name?", temperature=0, max_output_tokens=16)
    assert again.usage.input_tokens > alone.usage.input_tokens
    assert again.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2

    kept = smol.responses.retrieve(first.id)
    assert kept.id == first.id and kept.output_text == first.output_text
    deleted = httpx.delete(f"{smol_server.url}/v1/responses/{first.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        smol.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        smol.responses.create(model="smol", previous_response_id=first.id, input="And now?")
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.body["code"] == "previous_response_not_found"

    unstored = smol.responses.create(model="smol", input="Hi", store=False, max_output_tokens=4)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        smol.responses.retrieve(unstored.id)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_forced_function_call_validates(qwen, streamed):
    args = dict(
        model="qwen",
        input="What is the weather in Paris for the next 3 days?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
    )
    if streamed:
        with qwen.responses.stream(**args) as stream:
            events = list(stream)
            r = stream.get_final_response()
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert done.arguments == deltas
    else:
        r = qwen.responses.create(**args)
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls, r.output
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["parameters"])


def test_a_function_call_output_continues_the_conversation(qwen):
    tools = [WEATHER_TOOL]
    question = [{"role": "user", "content": "What is the weather in Paris today?"}]
    r = qwen.responses.create(model="qwen", input=question, tools=tools, tool_choice="required", temperature=0)
    call = next(item for item in r.output if item.type == "function_call")
    # Stateless, as Codex sends it: the whole conversation, the call and its output.
    items = question + [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees Celsius."},
    ]
    answer = qwen.responses.create(
        model="qwen", input=items, tools=tools, tool_choice="none", temperature=0, max_output_tokens=48
    )
    assert answer.output_text
    # The same conversation through Chat Completions: the same prompt, so the same greedy
    # answer and the same count of input tokens.
    chat = qwen.chat.completions.create(
        model="qwen",
        messages=question
        + [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 24 degrees Celsius."},
        ],
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}],
        tool_choice="none",
        temperature=0,
        max_tokens=48,
    )
    assert answer.usage.input_tokens == chat.usage.prompt_tokens
    assert answer.output_text == chat.choices[0].message.content
    # Stored: the same through previous_response_id.
    follow = qwen.responses.create(
        model="qwen",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees Celsius."}],
        tools=tools,
        tool_choice="none",
        temperature=0,
        max_output_tokens=48,
    )
    assert follow.usage.input_tokens == answer.usage.input_tokens
    assert follow.output_text == answer.output_text


def test_json_schema_output_validates(qwen):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = qwen.responses.create(
        model="qwen",
        input="Invent a person. Reply in JSON.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=64,
    )
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"temperature": 3}, "temperature"),
        ({"tools": [{"type": "function", "name": "get weather"}]}, "tools[0].name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_errors_name_their_parameter(smol, extra, param):
    args = {"model": "smol", "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as e:
        smol.responses.create(**args)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error"
