"""`pensieve serve --upstream` in front of mlx_lm.server (the mlx tests' venv, SmolLM2-135M's MLX
folder), driven with the real anthropic SDK: a message (with a system prompt) and its stream say
the same, with usage and a stop reason, and max_tokens ends an answer; and the real Claude Code
(`claude -p`) through it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anthropic
import httpx
import pytest
from conftest import SMOLLM2, free_port, mlx_model_dir, serve_front, stop_process, summary_line
from helpers import T0
from test_claude_code import run_claude

PYTHON = Path(os.environ.get("PENSIEVE_MLX_PYTHON", "~/.cache/pensieve/data/mlx-venv/bin/python")).expanduser()


@pytest.fixture(scope="module")
def mlx_server():
    if not PYTHON.exists():
        pytest.skip(f"no mlx-lm at {PYTHON} (scripts/setup-mlx-test.sh)")
    model = mlx_model_dir(SMOLLM2)
    port = free_port()
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "mlx_lm.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlx_lm.server exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlx_lm.server did not answer within 120 s"
            time.sleep(0.5)
        yield url, str(model)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def front(mlx_server):
    url, model = mlx_server
    # Claude Code names no temperature: the front's sampling defaults reach mlx_lm.server.
    # SmolLM2 ends about half its answers to Claude Code within 64 tokens at these, a quarter
    # at Anthropic's default of 1, and few greedy (it loops). The SDK tests name theirs.
    yield from serve_front(["--upstream", url, "--upstream-model", model, "--temp", "0.7", "--top-p", "0.9"])


@pytest.fixture(scope="module")
def client(front):
    return anthropic.Anthropic(base_url=front.url, api_key="anything", max_retries=0, timeout=300.0)


def test_a_message_and_its_stream_say_the_same(client):
    ask = {
        "model": "claude-opus-5-5",
        "max_tokens": 24,
        "system": "You are a terse assistant.",
        "messages": [{"role": "user", "content": "Name three primary colours."}],
        **T0,
    }
    whole = client.messages.create(**ask)
    assert whole.stop_reason in ("end_turn", "max_tokens"), whole
    text = "".join(b.text for b in whole.content if b.type == "text")
    assert text.strip()
    assert whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0) > 10, whole.usage
    assert whole.usage.output_tokens > 0

    with client.messages.stream(**ask) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text, "greedy, so the same answer"
    assert final.stop_reason == whole.stop_reason


def test_max_tokens_ends_the_answer(client):
    r = client.messages.create(
        model="claude-opus-5-5",
        max_tokens=3,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        **T0,
    )
    assert r.stop_reason == "max_tokens", r
    assert r.usage.output_tokens <= 3


@pytest.mark.claude_code
def test_claude_code_says_hello_through_mlx_lm_server(front):
    """`claude -p "Say hello"` with mlx_lm.server doing the math. SmolLM2's 8k context cannot hold
    Claude Code's own ~13k-token system prompt and tools, so this session brings a short system
    prompt and no built-in tools (`--system-prompt`, `--tools ""`): the requests are still Claude
    Code's own (its headers, metadata, thinking and streaming), translated for mlx_lm.server.
    It passes when Claude Code prints SmolLM2's answer, or ends with its own max-tokens error
    after whole streams of 64 tokens (a model this small often talks on)."""
    seen = len(front.log_tail(10**8))
    code, out, err, took = run_claude(
        front.url,
        "Say hello",
        300,
        args=["--tools", "", "--system-prompt", "You are a friendly assistant. Answer in one short sentence."],
        extra_env={"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "64"},
    )
    report = f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n" + (
        f"--- front log ---\n{front.log_tail(3000)}"
    )
    log = front.log_tail(10**8)[seen:]
    assert code is not None, "Claude Code timed out:\n" + report
    assert "stream=true" in log, "none of Claude Code's streamed messages reached the front:\n" + report
    answered = code == 0 and out.strip() and "API Error" not in out
    # SmolLM2-135M often runs on past any cap (greedy, it loops). Claude Code then ends with
    # its own max-tokens error, which it gives only after reading whole streams that ended in
    # `max_tokens`, so the translation held; any other error, or none of those streams, fails.
    ran_long = code == 1 and out.strip().startswith("API Error: Claude's response exceeded the 64 output token maximum")
    assert answered or ran_long, report
    if ran_long:
        assert "output_tokens=64" in log and "stop=MaxTokens" in log, report
    summary_line(f"claude -p 'Say hello' through mlx_lm.server took {took:.1f}s and printed: {out.strip()[:100]!r}")
