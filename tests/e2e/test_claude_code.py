"""The real Claude Code CLI (`claude -p`) against the real server.

Claude Code's first request is ~13k tokens of system prompt and tool schemas,
always streamed, with max_tokens capped here by CLAUDE_CODE_MAX_OUTPUT_TOKENS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import QWEN_CODER, _serve, claude_bin

pytestmark = pytest.mark.claude_code

# Cold prefill of ~13k tokens with a 0.5B model on 2 cores takes minutes.
HELLO_TIMEOUT_S = 15 * 60
TOO_LONG_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def qwen_server():
    """Qwen2.5-Coder-0.5B-Instruct with a context big enough for Claude Code."""
    yield from _serve(QWEN_CODER, ["--ctx", "32768"])


def run_claude(base_url: str, prompt: str, timeout_s: float, extra_env: dict[str, str] | None = None):
    """Run `claude -p PROMPT` with a throwaway HOME and working directory.
    Returns (exit code or None on timeout, stdout, stderr, seconds)."""
    binary = claude_bin()
    if not binary.exists():
        pytest.fail(f"Claude Code not found at {binary}: run scripts/setup-test-env.sh")
    with tempfile.TemporaryDirectory(prefix="pensieve-cc-home-") as home, tempfile.TemporaryDirectory(
        prefix="pensieve-cc-work-"
    ) as work:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_")) and k not in ("HOME", "XDG_CONFIG_HOME")
        }
        env.update(
            {
                "HOME": home,
                "ANTHROPIC_BASE_URL": base_url,
                "ANTHROPIC_AUTH_TOKEN": "local",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "256",
                "API_TIMEOUT_MS": str(int(timeout_s * 1000)),
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1",
            }
        )
        env.update(extra_env or {})
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "-p", prompt],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        return code, out, err, time.monotonic() - started


def test_claude_code_prompt_too_long_on_small_context(smol_server):
    """SmolLM2 has an 8k context: Claude Code's ~13k-token first request must be refused
    with the `prompt is too long` error at once, and Claude Code must report it and stop."""
    code, out, err, took = run_claude(smol_server.url, "Say hello", TOO_LONG_TIMEOUT_S * 2)
    report = f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n" \
             f"--- server log ---\n{smol_server.log_tail(3000)}"
    assert code is not None, "Claude Code hung:\n" + report
    assert took < TOO_LONG_TIMEOUT_S, report
    assert "too long" in (out + err).lower(), report
    assert code != 0, report
    assert smol_server.alive()


def test_claude_code_says_hello(qwen_server):
    code, out, err, took = run_claude(qwen_server.url, "Say hello", HELLO_TIMEOUT_S)
    report = f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n" \
             f"--- server log ---\n{qwen_server.log_tail(4000)}"
    assert code is not None, f"Claude Code did not finish within {HELLO_TIMEOUT_S}s:\n" + report
    assert code == 0, report
    assert out.strip(), "no text printed:\n" + report
    assert "API Error" not in out, report
    print(f"claude -p 'Say hello' took {took:.1f}s and printed: {out.strip()[:200]!r}")
