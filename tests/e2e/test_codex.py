"""OpenAI's Codex CLI (`codex exec`, npm @openai/codex) through `pensieve codex`, against the
real server on the Responses API: it answers a prompt, and on Qwen2.5-Coder-0.5B it makes a
well-formed function call (its `exec_command` tool) when the prompt asks for a command.

Codex's first request is ~6k tokens of instructions and tool schemas, streamed; the prefix
cache serves it to the second session. Codex records each session's items (the model's
function calls among them) under $CODEX_HOME/sessions, where the test reads them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import QWEN_CODER, _serve, pensieve_bin, summary_line

pytestmark = pytest.mark.codex

# A cold prefill of ~6k tokens with a 0.5B model on 2 cores, and a few tool turns.
TIMEOUT_S = 15 * 60


def codex_bin() -> Path:
    prefix = os.environ.get("PENSIEVE_NPM_PREFIX") or str(Path.home() / ".cache" / "pensieve" / "npm")
    return Path(prefix) / "node_modules" / ".bin" / "codex"


@pytest.fixture(scope="module")
def server():
    if not codex_bin().exists():
        pytest.fail(f"Codex CLI is not installed at {codex_bin()} (scripts/setup-test-env.sh installs it)")
    # Codex sends no temperature: greedy by the server's default, so that what the 0.5B
    # does with a prompt is the same in every run (sampled, it once answered "Say hello."
    # by running `echo` until the turn ended without a message).
    yield from _serve(QWEN_CODER, ["--ctx", "16384", "--temp", "0"])


@pytest.fixture(scope="module")
def codex_home():
    """Codex's home and the project it runs in, at the same paths in every run: both are
    named in Codex's prompt, and a greedy 0.5B model's choice between a tool call and a
    text answer can turn on a token of it."""
    root = Path(tempfile.gettempdir()) / "pensieve-codex-test"
    shutil.rmtree(root, ignore_errors=True)
    (root / "home").mkdir(parents=True)
    try:
        yield root / "home"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_codex(server, codex_home: Path, prompt: str) -> tuple[subprocess.CompletedProcess, list[dict], list[dict]]:
    """`pensieve codex exec --json PROMPT` in a new project; its events (stdout's JSON
    lines) and the items of the session it recorded."""
    before = set(codex_home.rglob("rollout-*.jsonl"))
    project = codex_home.parent / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    env = {**os.environ, "CODEX_HOME": str(codex_home)}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [
            str(pensieve_bin()),
            "codex",
            "--url",
            server.url,
            "--codex",
            str(codex_bin()),
            "exec",
            "--skip-git-repo-check",
            "--json",
            prompt,
        ],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    sessions = sorted(set(codex_home.rglob("rollout-*.jsonl")) - before)
    items = []
    for path in sessions:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("type") == "response_item":
                items.append(record["payload"])
    return done, events, items


def test_codex_exec_answers_a_prompt(server, codex_home):
    done, events, items = run_codex(server, codex_home, "Say hello.")
    assert done.returncode == 0, done.stderr[-3000:]
    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, events
    messages = [
        e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"
    ]
    assert messages and messages[-1].strip(), events
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 1000 and usage["output_tokens"] > 0
    summary_line(f"codex exec: answered {messages[-1].strip()[:60]!r}, {usage['input_tokens']} input tokens")


def test_codex_makes_a_well_formed_function_call(server, codex_home):
    done, events, items = run_codex(server, codex_home, "Run the shell command: echo pensieve-codex-test")
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [i for i in items if i.get("type") == "function_call"]
    assert calls, items[-3:]
    call = calls[0]
    assert call["name"] == "exec_command", call
    arguments = json.loads(call["arguments"])
    assert "echo pensieve-codex-test" in arguments["cmd"], arguments
    # Codex answered the call (ran it, or refused it under its sandbox) in the next request.
    outputs = [i for i in items if i.get("type") == "function_call_output"]
    assert any(o["call_id"] == call["call_id"] for o in outputs), items[-3:]
    # The second session read the instructions and tools from the prefix cache.
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["cached_input_tokens"] > usage["input_tokens"] // 2, usage
