"""The OpenAI Chat Completions API with the real `openai` SDK against the real binary:
plain and streamed replies with usage, tool calls (forced, with arguments that validate,
streamed as `tool_calls` deltas), `json_schema` output that validates, the model list,
and errors in OpenAI's shape with the SDK's exception types."""

from __future__ import annotations

import collections
import json

import anthropic
import jsonschema
import openai
import pytest
from conftest import QWEN_CODER, SMOLLM2, _serve

QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
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


def test_a_chat_completion(smol):
    r = smol.chat.completions.create(
        model="smol",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "smol"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_max_tokens_ends_with_length_and_a_repeat_reads_the_cache(smol, on_gpu):
    messages = [{"role": "user", "content": "Count from one to one hundred in words, separated by commas."}]
    first = smol.chat.completions.create(model="smol", messages=messages, max_completion_tokens=8, temperature=0)
    assert first.choices[0].finish_reason == "length"
    assert first.usage.completion_tokens == 8
    again = smol.chat.completions.create(model="smol", messages=messages, max_completion_tokens=8, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    # On a GPU a prompt that ends inside a cached one is computed again: its last token, in a
    # batch of another shape than the first time, could flip a greedy near-tie, and the
    # repeat must say the same. On the CPU results do not depend on the batch.
    if not on_gpu:
        assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_a_streamed_completion_with_usage(smol):
    stream = smol.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = [], None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            text.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert roles == ["assistant"]
    assert "".join(text).strip()
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 24


def test_logit_bias_and_penalties_change_the_output(smol):
    """A +100 bias on one token makes greedy decoding write only it; a frequency penalty
    keeps a repetitive answer from repeating itself."""
    args = dict(
        model="smol",
        messages=[{"role": "user", "content": "List the word cat twenty times."}],
        max_tokens=40,
        temperature=0,
    )
    plain = smol.chat.completions.create(**args).choices[0].message.content
    forced = smol.chat.completions.create(**args, logit_bias={"1000": 100}).choices[0].message.content
    assert forced != plain
    unit = forced[: len(forced) // 40]
    assert unit and forced == unit * 40, forced

    def most_repeated(text: str) -> int:
        return collections.Counter(text.lower().split()).most_common(1)[0][1]

    penalised = smol.chat.completions.create(**args, frequency_penalty=2.0).choices[0].message.content
    assert most_repeated(plain) >= 5, plain
    assert most_repeated(penalised) < most_repeated(plain), (plain, penalised)
    with pytest.raises(openai.BadRequestError) as e:
        smol.chat.completions.create(**args, logit_bias={"99999999": 1})
    assert "vocabulary" in e.value.message


@pytest.mark.parametrize("streamed", [False, True])
def test_logprobs_match_the_tokens(smol, streamed):
    """Greedy decoding with logprobs: one entry per generated token, whose bytes make the
    text; each token is the most likely of its top_logprobs, with the same logprob."""
    args = dict(
        model="smol",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    if streamed:
        entries, text, usage, finish = [], [], None, None
        for chunk in smol.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                entries.extend(choice.logprobs.content if choice.logprobs else [])
                finish = choice.finish_reason or finish
        text = "".join(text)
    else:
        r = smol.chat.completions.create(**args)
        entries, text, usage = r.choices[0].logprobs.content, r.choices[0].message.content, r.usage
        finish = r.choices[0].finish_reason
    # The model may end its reply before max_tokens (on a GPU it does, a token early).
    assert len(entries) == usage.completion_tokens
    assert usage.completion_tokens == 12 if finish == "length" else 0 < usage.completion_tokens < 12
    assert bytes(b for e in entries for b in e.bytes).decode().strip() == text.strip()
    for e in entries:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].bytes == e.bytes
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4


def test_a_seed_makes_sampling_repeatable(smol):
    args = dict(
        model="smol", messages=[{"role": "user", "content": "Invent a name for a cat."}], max_tokens=16, temperature=1.0
    )
    a = smol.chat.completions.create(**args, seed=7).choices[0].message.content
    b = smol.chat.completions.create(**args, seed=7).choices[0].message.content
    assert a == b
    others = {smol.chat.completions.create(**args, seed=s).choices[0].message.content for s in (8, 9, 10)}
    assert others - {a}, "other seeds give other samples"


def test_the_servers_sampling_defaults_fill_what_a_request_leaves_out():
    """`serve --temp 0`: requests that name no temperature (Claude Code's) are greedy on both
    APIs, the same as ones that ask for temperature 0; one that names its own keeps it."""
    gen = _serve(SMOLLM2, ["--temp", "0"])
    server = next(gen)
    try:
        oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0, timeout=180.0)
        ask = dict(model="smol", messages=[{"role": "user", "content": "Invent a name for a cat."}], max_tokens=16)
        greedy = oai.chat.completions.create(**ask, temperature=0).choices[0].message.content
        assert oai.chat.completions.create(**ask).choices[0].message.content == greedy
        sampled = {
            oai.chat.completions.create(**ask, temperature=1.0, seed=s).choices[0].message.content for s in (8, 9, 10)
        }
        assert sampled - {greedy}, "a request's own temperature wins over the server's"

        ant = anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=180.0)
        ask = dict(model="smol", messages=[{"role": "user", "content": "Invent a name for a dog."}], max_tokens=16)
        greedy = ant.messages.create(**ask, extra_body={"temperature": 0}).content[0].text
        assert ant.messages.create(**ask).content[0].text == greedy
    finally:
        gen.close()


def test_stop_sequences(smol):
    """Greedy output cut at a stop string taken from the uncut output: the reply is what
    came before it, and ends with `stop`."""
    args = dict(
        model="smol",
        messages=[{"role": "user", "content": "Describe the sea in two sentences."}],
        max_tokens=48,
        temperature=0,
    )
    full = smol.chat.completions.create(**args).choices[0].message.content
    words = full.split()
    assert len(words) > 4, full
    stop = words[len(words) // 2]
    r = smol.chat.completions.create(**args, stop=[stop, "never-said"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.index(stop)]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_forced_tool_call_validates(qwen, streamed):
    args = dict(
        model="qwen",
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=96,
        temperature=0,
    )
    if not streamed:
        r = qwen.chat.completions.create(**args)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    else:
        calls = {}
        finish = None
        for chunk in qwen.chat.completions.create(**args, stream=True):
            if not chunk.choices:
                continue
            for d in chunk.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(d.index, [None, None, ""])
                if d.id:
                    entry[0] = d.id
                if d.function and d.function.name:
                    entry[1] = d.function.name
                if d.function and d.function.arguments:
                    entry[2] += d.function.arguments
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        calls = [tuple(v) for _, v in sorted(calls.items())]
    assert len(calls) == 1, calls
    call_id, name, arguments = calls[0]
    assert call_id.startswith("call_")
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])


def test_a_tool_result_continues_the_conversation(qwen):
    r = qwen.chat.completions.create(
        model="qwen",
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=96,
        temperature=0,
    )
    call = r.choices[0].message.tool_calls[0]
    follow = qwen.chat.completions.create(
        model="qwen",
        messages=QUESTION
        + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees Celsius."},
        ],
        tools=[WEATHER_TOOL],
        # A 0.5B model would call the tool again; the answer is what is tested here.
        tool_choice="none",
        max_tokens=64,
        temperature=0,
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    assert follow.choices[0].message.content


def test_json_schema_output_validates(qwen):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "languages"],
    }
    r = qwen.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "Describe a fictional programmer."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        max_tokens=160,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_schema_integers_end_with_a_small_model(smol):
    """Greedy SmolLM2 under a schema with an integer wrote `"age": 13987200100000000…`
    until max_tokens: an integer the schema leaves unbounded ends within what an i64 holds."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    r = smol.chat.completions.create(
        model="smol",
        # Greedy, the model writes the universe's age with as many digits as it may.
        messages=[{"role": "user", "content": "How old is the universe?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        max_tokens=128,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    value = json.loads(r.choices[0].message.content)
    jsonschema.validate(value, schema)
    assert -(2**63) < value["age"] < 2**63


def test_json_object_output_is_an_object(smol):
    r = smol.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=96,
        temperature=0,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_the_model_list(smol):
    models = smol.models.list()
    assert len(models.data) == 1
    assert models.data[0].object == "model"
    assert models.data[0].id


def test_errors_have_openais_shape_and_types(smol, small_ctx_server, auth_server):
    with pytest.raises(openai.BadRequestError) as e:
        smol.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], n=3)
    assert e.value.body["param"] == "n"
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        smol.chat.completions.create(model="smol", messages=[])
    tight = openai.OpenAI(base_url=f"{small_ctx_server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        tight.chat.completions.create(model="smol", messages=[{"role": "user", "content": "word " * 2000}])
    assert e.value.code == "context_length_exceeded"
    locked = openai.OpenAI(base_url=f"{auth_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        locked.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}])
    ok = openai.OpenAI(base_url=f"{auth_server.url}/v1", api_key="secret", max_retries=0)
    assert ok.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_values_the_api_refuses_are_400(smol, extra, param):
    """What OpenAI's API refuses is refused here too, with the field in `param`."""
    body = {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as e:
        smol.post("/chat/completions", body=body, cast_to=object)
    assert e.value.param == param, e.value.body
    assert e.value.type == "invalid_request_error"
    assert e.value.code is None


def test_edge_values_the_api_accepts(smol):
    r = smol.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=1,
        temperature=2,
        top_p=0,
        presence_penalty=-2,
        frequency_penalty=2,
        seed=-1,
        stop=["a", "b", "c", "d"],
        logprobs=True,
        top_logprobs=20,
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_bad_body_is_a_bad_request(smol_server):
    import httpx

    r = httpx.post(
        f"{smol_server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_text_completion(smol):
    """`/v1/completions`: the prompt continued as it is, with logprobs in the legacy shape."""
    r = smol.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    assert r.object == "text_completion"
    choice = r.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert "".join(lp.tokens).strip() == choice.text.strip()
    assert all(x <= 0 for x in lp.token_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    # The same prompt as token ids, streamed.
    pieces, finish = [], None
    for chunk in smol.completions.create(
        model="smol", prompt=[1000, 1001, 1002], max_tokens=6, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) and finish == "length"
    with pytest.raises(openai.BadRequestError) as e:
        smol.completions.create(model="smol", prompt=[99999999], max_tokens=2)
    assert "vocabulary" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        smol.completions.create(model="smol", prompt="x", echo=True)
    assert e.value.body["param"] == "echo"
