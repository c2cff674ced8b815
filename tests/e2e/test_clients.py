"""Clients other than the Python SDKs and the agents with tests of their own, against the
real binary, all on one server with Qwen2.5-Coder-0.5B:
- the TypeScript SDKs (npm `@anthropic-ai/sdk`, `openai`) stream a reply that is a forced
  tool call, through Messages, Chat Completions and Responses;
- opencode (npm `opencode-ai`), `opencode run` with Pensieve as an OpenAI-compatible provider
  and then as an Anthropic one: the second reads the first's ~7k-token prompt from the cache;
- Qwen Code (npm `@qwen-code/qwen-code`), one non-interactive prompt on its OpenAI auth
  (`--bare`, one tool: see the test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest
from conftest import QWEN_CODER, _serve, summary_line

CLIENTS = Path(__file__).parent / "clients"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
}


def npm_modules() -> Path:
    prefix = os.environ.get("PENSIEVE_NPM_PREFIX") or str(Path.home() / ".cache" / "pensieve" / "npm")
    return Path(prefix) / "node_modules"


# An agent's first request is 7-13k tokens; a cold prefill with a 0.5B model on 2 cores
# takes minutes.
AGENT_TIMEOUT_S = 15 * 60


@pytest.fixture(scope="module")
def qwen_server():
    yield from _serve(QWEN_CODER, ["--ctx", "32768"])


def npm_bin(name: str) -> Path:
    path = npm_modules() / ".bin" / name
    if not path.exists():
        pytest.fail(f"{name} is not installed at {path} (scripts/setup-test-env.sh installs it)")
    return path


@pytest.fixture
def scratch():
    """A home and a project for one client run, at the same paths in every run (both can
    appear in an agent's prompt)."""
    root = Path(tempfile.gettempdir()) / "pensieve-client-test"
    shutil.rmtree(root, ignore_errors=True)
    (root / "home").mkdir(parents=True)
    (root / "project").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def client_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), **extra})
    return env


def test_the_typescript_sdks_stream_a_tool_call(qwen_server):
    for package in ("@anthropic-ai/sdk", "openai"):
        if not (npm_modules() / package).is_dir():
            pytest.fail(f"npm {package} is not installed in {npm_modules()} (scripts/setup-test-env.sh installs it)")
    done = subprocess.run(
        ["node", str(CLIENTS / "ts_sdks.cjs"), qwen_server.url, "qwen"],
        env={**os.environ, "NODE_PATH": str(npm_modules())},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)

    a = out["anthropic"]
    assert a["events"][0] == "message_start" and a["events"][-1] == "message_stop"
    assert "content_block_delta" in a["events"]
    assert a["stop_reason"] == "tool_use"
    call = next(b for b in a["content"] if b["type"] == "tool_use")
    assert call["name"] == "get_weather" and call["id"].startswith("toolu_")
    jsonschema.validate(call["input"], SCHEMA)
    assert a["usage"]["output_tokens"] > 0

    c = out["openai_chat"]
    assert c["finish_reason"] == "tool_calls"
    assert c["calls"][0]["name"] == "get_weather" and c["calls"][0]["id"].startswith("call_")
    jsonschema.validate(json.loads(c["calls"][0]["arguments"]), SCHEMA)
    assert c["usage"]["completion_tokens"] > 0

    r = out["openai_responses"]
    assert r["events"][0] == "response.created" and r["events"][-1] == "response.completed"
    assert "response.function_call_arguments.delta" in r["events"]
    assert r["status"] == "completed"
    fc = next(item for item in r["output"] if item["type"] == "function_call")
    assert fc["name"] == "get_weather"
    jsonschema.validate(json.loads(fc["arguments"]), SCHEMA)
    # The same greedy call through all three APIs: one prompt, one template.
    assert json.loads(fc["arguments"]) == json.loads(c["calls"][0]["arguments"]) == call["input"]


def opencode_config(kind: str, base_url: str) -> dict:
    """Pensieve as an opencode provider through the AI SDK package `kind`."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "pensieve": {
                "npm": kind,
                "name": "Pensieve",
                "options": {"baseURL": f"{base_url}/v1", "apiKey": "local"},
                "models": {"qwen": {"name": "Qwen2.5-Coder-0.5B"}},
            }
        },
        "model": "pensieve/qwen",
        "autoupdate": False,
        "share": "disabled",
    }


def test_opencode_runs_on_both_apis(qwen_server, scratch):
    opencode = npm_bin("opencode")
    steps = {}
    for kind in ("@ai-sdk/openai-compatible", "@ai-sdk/anthropic"):
        config = scratch / f"{kind.split('/')[1]}.json"
        config.write_text(json.dumps(opencode_config(kind, qwen_server.url)))
        done = subprocess.run(
            [str(opencode), "run", "--format", "json", "-m", "pensieve/qwen", "Say hello."],
            cwd=scratch / "project",
            env=client_env(scratch / "home", OPENCODE_CONFIG=str(config)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=AGENT_TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert not [e for e in events if e["type"] == "error"], events
        texts = [e["part"]["text"] for e in events if e["type"] == "text"]
        assert texts and texts[-1].strip(), events
        finish = [e["part"] for e in events if e["type"] == "step_finish"]
        assert finish and finish[-1]["reason"] == "stop", events
        steps[kind] = finish[-1]["tokens"]
    # opencode asks the same thing either way: the second run reads the first's prompt from
    # the prefix cache (which the Anthropic API reports as cache reads).
    anthropic = steps["@ai-sdk/anthropic"]
    assert anthropic["cache"]["read"] > anthropic["input"], steps
    summary_line(f"opencode run: {steps}")


def test_qwen_code_answers_a_prompt(qwen_server, scratch):
    qwen = npm_bin("qwen")
    done = subprocess.run(
        [
            str(qwen),
            # First: an array option such as --core-tools takes every word after it.
            "Say hello.",
            "--auth-type",
            "openai",
            "--openai-base-url",
            f"{qwen_server.url}/v1",
            "--openai-api-key",
            "local",
            "-m",
            "qwen",
            "-o",
            "json",
            "--max-session-turns",
            "3",
            # Its own system prompt, one tool, and no start-up discovery: one ~7k-token
            # request. With every tool and its memory extractor it makes ~13k and ~10k, some
            # 11 minutes of cold prefill on 2 cores (it works so too; the README says so).
            "--bare",
            "--core-tools=read_file",
        ],
        cwd=scratch / "project",
        # Qwen Code gives up on a stream silent for 4 minutes, which a cold prefill of its
        # ~13k-token prompt on 2 cores can be (the README's client table says so).
        env=client_env(
            scratch / "home",
            QWEN_STREAM_IDLE_TIMEOUT_MS=str(AGENT_TIMEOUT_S * 1000),
            QWEN_STREAM_MAX_LIFETIME_MS=str(AGENT_TIMEOUT_S * 1000),
            QWEN_CODE_API_TIMEOUT_MS=str(AGENT_TIMEOUT_S * 1000),
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Its JSON output: one array of the session's messages, first on stdout.
    messages = json.loads(done.stdout.splitlines()[0])
    result = next(m for m in messages if m["type"] == "result")
    assert result["subtype"] == "success" and not result["is_error"], result
    assert result["result"].strip(), result
    summary_line(f"qwen -p: {result['result'].strip()[:80]!r} in {result['duration_ms']} ms")
