"""Harmony (gpt-oss) end to end on a model with gpt-oss's real vocabulary, with the real
anthropic SDK.

No test model has that vocabulary, so scripts/make-harmony-test-model.py builds one: a
tiny llama with random weights that carries gpt-oss's real tokenizer (tiktoken's
o200k_harmony, 201,088 tokens, each Harmony marker one control token; the ids are
checked against tiktoken in crates/pensieve-llama/tests/harmony_vocab.rs) and gpt-oss's
real chat template. The server detects Harmony from that template, renders Claude Code's
12 tools with it and tokenizes the prompt with the real vocabulary; forced calls run
under the Harmony grammar over all 201k tokens, and the output is read back by the
Harmony parser.

The weights are random, so nothing but the grammar makes the output a call: that is the
point. It also bounds what can be asserted. Greedy decoding of a random model repeats
itself inside the first string it opens and never closes it, so a call of a tool with a
free-text argument runs to `max_tokens` and comes back cut off, its arguments closed into
valid JSON by the server: every argument it has then fits its schema, but a required
argument after the cut may be missing. A call of a tool whose arguments leave the model
no free text (Claude Code's own `DeferredToolPlaceholder`, which takes none) completes,
and is checked against the whole schema, as is a tool result rendered back through the
template.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anthropic
import jsonschema
import pytest
from conftest import ENGINE, Server, models_dir, pensieve_bin

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SRC = ROOT / "crates" / "pensieve-engine" / "src"
CLAUDE_CODE_TOOLS = json.loads((ENGINE_SRC / "constrain" / "fixtures" / "claude_code_tools.json").read_text())
SCHEMAS = {t["name"]: t["input_schema"] for t in CLAUDE_CODE_TOOLS}
MODEL = "harmony-tiny-random.gguf"
# The one Claude Code tool whose call leaves a model no free text: it takes no arguments.
NO_FREE_TEXT = "DeferredToolPlaceholder"
MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>", "<|return|>")
ASK = [{"role": "user", "content": "Show me what is in the project's README."}]
# Greedy: the same output every run.
T0 = {"extra_body": {"temperature": 0}}

pytestmark = pytest.mark.skipif(ENGINE != "llama", reason="a GGUF model: the llama engine")


def harmony_model() -> Path:
    """The model, built unless it is there (seconds; a no-op when it is)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-harmony-test-model.py")], check=True)
    path = models_dir() / MODEL
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def harmony():
    # Claude Code's tools make a prompt of about 6k tokens. One thread: the model is
    # so small that a second only waits on the first.
    server = Server(harmony_model(), ["--ctx", "16384"], threads=1)
    try:
        server.start()
        yield server
    finally:
        server.close()


def client_for(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="anything", max_retries=0, timeout=600.0)


def check_input(message, name: str | None, server) -> dict:
    """The one tool_use block of a forced call: named as forced (or one of the tools), no
    text or reasoning around it, and arguments that fit the tool's schema: the whole schema
    when the call completed; when `max_tokens` cut it off, every argument it has."""
    report = f"{message}\n--- log ---\n{server.log_tail(3000)}"
    assert [b.type for b in message.content] == ["tool_use"], report
    call = message.content[0]
    assert call.name == (name or call.name) and call.name in SCHEMAS, report
    schema = SCHEMAS[call.name]
    if message.stop_reason == "max_tokens":
        schema = {k: v for k, v in schema.items() if k != "required"}
    else:
        assert message.stop_reason == "tool_use", report
    jsonschema.validate(call.input, schema)
    for value in call.input.values():
        for marker in MARKERS:
            assert marker not in json.dumps(value), report
    return call.input


def test_show_detects_harmony_from_the_embedded_template():
    out = subprocess.run(
        [str(pensieve_bin()), "show", str(harmony_model()), "--json"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RUST_LOG": "error"},
    )
    info = json.loads(out.stdout)
    assert info["tool_calls"] == "harmony", info
    assert info["architecture"] == "llama"
    assert "<|channel|>" in info["chat_template"]


@pytest.mark.parametrize("tool", ["Bash", "Read", "Write"])
def test_forced_claude_code_calls_fit_their_schema(harmony, tool):
    message = client_for(harmony).messages.create(
        model="gpt-oss",
        max_tokens=96,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "tool", "name": tool},
        messages=ASK,
        **T0,
    )
    check_input(message, tool, harmony)


def test_a_forced_call_without_free_text_completes(harmony):
    message = client_for(harmony).messages.create(
        model="gpt-oss",
        max_tokens=96,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "tool", "name": NO_FREE_TEXT},
        messages=ASK,
        **T0,
    )
    assert message.stop_reason == "tool_use", message
    assert check_input(message, NO_FREE_TEXT, harmony) == {}


@pytest.mark.parametrize("forced", [{"type": "any"}, {"type": "tool", "name": NO_FREE_TEXT}])
def test_a_streamed_forced_call_arrives_as_input_json_deltas(harmony, forced):
    fragments, kinds = [], []
    with client_for(harmony).messages.stream(
        model="gpt-oss",
        max_tokens=96,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice=forced,
        messages=ASK,
        **T0,
    ) as stream:
        for event in stream:
            if event.type == "content_block_start":
                kinds.append(event.content_block.type)
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert kinds == ["tool_use"], final
    call = check_input(final, forced.get("name"), harmony)
    # What streamed is the call's arguments.
    assert json.loads("".join(fragments) or "{}") == call
    if forced["type"] == "any":
        assert len(fragments) > 1, "the arguments came in one piece, not as they were generated"


def test_a_tool_result_renders_back_and_the_next_forced_call_completes(harmony):
    client = client_for(harmony)
    first = client.messages.create(
        model="gpt-oss",
        max_tokens=96,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "tool", "name": "Read"},
        messages=ASK,
        **T0,
    )
    call = first.content[0]
    history = ASK + [
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "# Pensieve\n"}]},
    ]
    answer = client.messages.create(
        model="gpt-oss",
        max_tokens=96,
        tools=CLAUDE_CODE_TOOLS,
        tool_choice={"type": "tool", "name": NO_FREE_TEXT},
        messages=history,
        **T0,
    )
    assert check_input(answer, NO_FREE_TEXT, harmony) == {}
    # The prompt up to the call was read from the cache: the history rendered as before.
    assert answer.usage.cache_read_input_tokens > 0, answer.usage
