"""The real Claude Code CLI (`claude -p`) against the real server.

Claude Code's first request is ~13k tokens of system prompt and tool schemas,
always streamed, with max_tokens capped here by CLAUDE_CODE_MAX_OUTPUT_TOKENS.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import tempfile
import time
import zoneinfo
from pathlib import Path

import httpx
import pytest
from conftest import (
    QWEN_CODER,
    Server,
    _serve,
    claude_bin,
    free_port,
    model_path,
    pensieve_bin,
    summary_line,
)
from helpers import IMAGES_LOGGED, png

pytestmark = pytest.mark.claude_code

# Cold prefill of ~13k tokens with a 0.5B model on 2 cores takes minutes.
HELLO_TIMEOUT_S = 15 * 60
TOO_LONG_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cache_dir():
    with tempfile.TemporaryDirectory(prefix="pensieve-cc-cache-") as d:
        yield d


@pytest.fixture(scope="module")
def user_home():
    """The user's HOME: the same for every session, as on a real machine (Claude Code's
    system prompt names paths under it, e.g. its memory directory)."""
    with tempfile.TemporaryDirectory(prefix="pensieve-cc-user-") as d:
        yield d


@pytest.fixture(scope="module")
def project_dir():
    """The user's project: every Claude Code session here runs in it."""
    with tempfile.TemporaryDirectory(prefix="pensieve-cc-project-") as d:
        yield d


@pytest.fixture(scope="module")
def qwen_server(cache_dir):
    """Qwen2.5-Coder-0.5B-Instruct with a context big enough for Claude Code, and a
    prefix cache on disk."""
    yield from _serve(QWEN_CODER, ["--ctx", "32768", "--cache-dir", cache_dir])


# What `pensieve claude` tells Claude Code about the served model (its name is also in
# Claude Code's system prompt): the sessions against Qwen use the same, so the one
# `pensieve claude` runs finds the prompt the earlier ones cached.
QWEN_ENV = {"ANTHROPIC_MODEL": "Qwen2.5-Coder-0.5B-Instruct", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "32768"}

# How long the cold session took, for the session after the restart.
COLD_SESSION: dict[str, float] = {}


def metric(server, name: str) -> float:
    """One sample of the server's /metrics, 0 when absent."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_claude(
    base_url: str,
    prompt: str,
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
    workdir: str | None = None,
    home: str | None = None,
    args: list[str] | None = None,
):
    """Run `claude -p PROMPT [ARGS]` with `home` as HOME and in `workdir` (each default: a
    throwaway directory). Returns (exit code or None on timeout, stdout, stderr, seconds)."""
    binary = claude_bin()
    if not binary.exists():
        pytest.fail(f"Claude Code not found at {binary}: run scripts/setup-test-env.sh")
    with (
        tempfile.TemporaryDirectory(prefix="pensieve-cc-home-") as scratch_home,
        tempfile.TemporaryDirectory(prefix="pensieve-cc-work-") as scratch,
    ):
        work = workdir or scratch
        home = home or scratch_home
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
            [str(binary), "-p", prompt, *(args or [])],
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
    report = (
        f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n"
        f"--- server log ---\n{smol_server.log_tail(3000)}"
    )
    assert code is not None, "Claude Code hung:\n" + report
    assert took < TOO_LONG_TIMEOUT_S, report
    assert "too long" in (out + err).lower(), report
    assert code != 0, report
    assert smol_server.alive()


def test_claude_code_says_hello(qwen_server, project_dir, user_home):
    code, out, err, took = run_claude(
        qwen_server.url, "Say hello", HELLO_TIMEOUT_S, workdir=project_dir, home=user_home, extra_env=QWEN_ENV
    )
    report = (
        f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n"
        f"--- server log ---\n{qwen_server.log_tail(4000)}"
    )
    assert code is not None, f"Claude Code did not finish within {HELLO_TIMEOUT_S}s:\n" + report
    assert code == 0, report
    assert out.strip(), "no text printed:\n" + report
    assert "API Error" not in out, report
    summary_line(f"claude -p 'Say hello' took {took:.1f}s and printed: {out.strip()[:200]!r}")
    COLD_SESSION["seconds"] = took


def test_claude_code_through_an_upstream(qwen_server, project_dir, user_home):
    """`claude -p "Say hello"` against a Pensieve that serves its model from another one
    (`--upstream`, the OpenAI API in between): Claude Code sees no difference. The upstream
    has this prompt cached from the session before, as a replica of a real cluster would."""
    front = Server(None, ["--upstream", f"{qwen_server.url}/v1"])
    try:
        front.start()
        code, out, err, took = run_claude(
            front.url, "Say hello", HELLO_TIMEOUT_S, workdir=project_dir, home=user_home, extra_env=QWEN_ENV
        )
        report = (
            f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n"
            f"--- front log ---\n{front.log_tail(3000)}\n--- upstream log ---\n{qwen_server.log_tail(3000)}"
        )
        assert code == 0, report
        assert out.strip(), "no text printed:\n" + report
        assert "API Error" not in out, report
        summary_line(f"claude -p 'Say hello' through --upstream took {took:.1f}s and printed: {out.strip()[:200]!r}")
    finally:
        front.close()


def test_the_claude_agent_sdk_runs_a_query(qwen_server, project_dir, user_home):
    """The Claude Agent SDK (PyPI `claude-agent-sdk`) drives Claude Code from a program:
    `query()` with Claude Code underneath, pointed at Pensieve by the environment it passes."""
    import anyio
    from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ResultMessage, TextBlock, query

    env = {
        "HOME": user_home,
        "ANTHROPIC_BASE_URL": qwen_server.url,
        "ANTHROPIC_AUTH_TOKEN": "local",
        "ANTHROPIC_API_KEY": "",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "256",
        "API_TIMEOUT_MS": str(HELLO_TIMEOUT_S * 1000),
        "DISABLE_AUTOUPDATER": "1",
        **QWEN_ENV,
    }
    # Claude Code's own system prompt, as `claude -p` sends it (the SDK's default is a short
    # one): the prompt that test_claude_code_says_hello left in the cache.
    options = ClaudeAgentOptions(
        cli_path=str(claude_bin()),
        cwd=project_dir,
        env=env,
        max_turns=1,
        model=QWEN_ENV["ANTHROPIC_MODEL"],
        system_prompt={"type": "preset", "preset": "claude_code"},
    )

    async def run():
        texts, results = [], []
        with anyio.fail_after(HELLO_TIMEOUT_S):
            async for message in query(prompt="Say hello", options=options):
                if isinstance(message, AssistantMessage):
                    texts.extend(b.text for b in message.content if isinstance(b, TextBlock))
                elif isinstance(message, ResultMessage):
                    results.append(message)
        return texts, results

    started = time.monotonic()
    texts, results = anyio.run(run)
    took = time.monotonic() - started
    report = f"texts={texts} results={results}\n--- server log ---\n{qwen_server.log_tail(3000)}"
    assert len(results) == 1 and not results[0].is_error, report
    answer = "".join(texts).strip()
    assert answer and "API Error" not in answer, report
    assert (
        results[0].usage
        and results[0].usage.get("input_tokens", 0) + results[0].usage.get("cache_read_input_tokens", 0) > 0
    ), report
    usage = results[0].usage
    summary_line(
        f"claude-agent-sdk query('Say hello') took {took:.1f}s ({usage.get('cache_read_input_tokens', 0)} of"
        f" {usage.get('input_tokens', 0) + usage.get('cache_read_input_tokens', 0)} prompt tokens from the cache)"
        f" and got: {answer[:200]!r}"
    )


def another_day_tz() -> str:
    """A time zone whose date today differs from this machine's: Claude Code writes
    today's date into its prompt, so a session there is a session on another day."""
    today = datetime.date.today()
    for tz in ("Pacific/Kiritimati", "Etc/GMT+12"):
        if datetime.datetime.now(zoneinfo.ZoneInfo(tz)).date() != today:
            return tz
    pytest.fail("no time zone found on another date")


def test_a_new_session_elsewhere_after_a_restart_reuses_the_prompt_from_disk(
    qwen_server, project_dir, user_home, cache_dir
):
    """Claude Code's system prompt, tool schemas and most of its environment are the same
    in every session of a user. After the server restarts, a new session in another
    project, on another date, reads them from --cache-dir and prefills only what names
    its project and day, and its prompt: the server puts those parts last (the system
    prompt's memory section names the project, in front of the tools as sent)."""
    if "seconds" not in COLD_SESSION:
        pytest.fail("the cold session (test_claude_code_says_hello) did not succeed")
    qwen_server.stop()
    assert any(Path(cache_dir).rglob("*.kv")), "nothing was written to --cache-dir on shutdown"
    qwen_server.start()
    assert metric(qwen_server, 'pensieve_cache_entries{tier="disk"}') >= 1
    tz = another_day_tz()
    with tempfile.TemporaryDirectory(prefix="pensieve-cc-other-project-") as other_project:
        code, out, err, took = run_claude(
            qwen_server.url,
            "Say hi",
            HELLO_TIMEOUT_S,
            workdir=other_project,
            home=user_home,
            extra_env={**QWEN_ENV, "TZ": tz},
        )
    report = (
        f"exit={code} took={took:.1f}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\n"
        f"--- server log ---\n{qwen_server.log_tail(4000)}"
    )
    assert code == 0, report
    assert out.strip(), "no text printed:\n" + report
    prompt = metric(qwen_server, "pensieve_prompt_tokens_total")
    cached = metric(qwen_server, "pensieve_cached_prompt_tokens_total")
    cold = COLD_SESSION["seconds"]
    summary_line(
        f"after a restart, another project, TZ={tz}: claude -p 'Say hi' took {took:.1f}s = "
        f"{took / cold:.2f} of the cold session ({cold:.1f}s); {cached:.0f} of {prompt:.0f} prompt "
        f"tokens ({cached / max(prompt, 1):.1%}) came from the cache"
    )
    assert cached >= 0.9 * prompt, report
    assert took <= 0.25 * cold, report


FILE_TASK = "create hello.txt containing hi"
FILE_TASK_RUNS = 3
# A Write call for hello.txt is ~50 tokens. The cap bounds what a rambling answer costs:
# Claude Code asks the model to go on after each answer cut off by max_tokens, and decode
# at Claude Code's ~12k tokens of context is slow on 2 cores.
FILE_TASK_MAX_TOKENS = "128"
# Two turns are enough: the Write call, then the answer after its result. A third let a
# rambling run (each turn cut off and continued up to Claude Code's retry limit, ~30 s a
# request here) pass 600 s on the CI machine.
FILE_TASK_MAX_TURNS = "2"
# Catches a hang; a run bounded as above took up to 8.3 minutes here, usually seconds.
FILE_TASK_TIMEOUT_S = 15 * 60
# Ways a run ends that are the model's doing, not the server's: answers that stay too long
# after Claude Code's retries, or tool calls that go nowhere for --max-turns turns.
MODEL_ENDINGS = ("output token maximum", "Reached max turns")
# Tool calls the server could not make well-formed say so in its log.
MALFORMED_CALL_LOGS = ("could not be parsed", "not valid JSON", "not well-formed", "cut off before")


def test_claude_code_file_task(qwen_server, project_dir, user_home):
    """`claude -p "create hello.txt containing hi" --permission-mode acceptEdits`, three
    times in the user's project (its path is in Claude Code's system prompt: the same
    project keeps the prompt cached), the file removed before each. Whether a 0.5B model
    chooses to call the Write tool is its own business (the rate is printed); every run
    must end, without an error of the server's, and every tool call the server returned
    must have been well-formed."""
    log_before = len(qwen_server.log_tail(10**9))
    target = Path(project_dir) / "hello.txt"
    outcomes = []
    for _ in range(FILE_TASK_RUNS):
        target.unlink(missing_ok=True)
        code, out, err, took = run_claude(
            qwen_server.url,
            FILE_TASK,
            FILE_TASK_TIMEOUT_S,
            workdir=project_dir,
            home=user_home,
            args=["--permission-mode", "acceptEdits", "--max-turns", FILE_TASK_MAX_TURNS],
            extra_env={**QWEN_ENV, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": FILE_TASK_MAX_TOKENS},
        )
        content = target.read_text(errors="replace") if target.exists() else None
        outcomes.append((code, content, took, out.strip()[:120]))
        report = (
            f"exit={code} took={took:.1f}s\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}\n"
            f"--- server log ---\n{qwen_server.log_tail(3000)}"
        )
        assert code is not None, "Claude Code did not finish:\n" + report
        assert code == 0 or any(m in out + err for m in MODEL_ENDINGS), report
        assert qwen_server.alive(), report
    log = qwen_server.log_tail(10**9)[log_before:]
    calls = log.count("stop=ToolUse")
    for line in log.splitlines():
        assert not any(m in line for m in MALFORMED_CALL_LOGS), f"malformed tool call: {line}"
    created = sum(1 for _, content, _, _ in outcomes if content is not None and content.strip() == "hi")
    summary_line(
        f"file task: hello.txt containing 'hi' in {created} of {len(outcomes)} runs; "
        f"{calls} responses ended in tool calls"
    )
    for code, content, took, out in outcomes:
        summary_line(f"  exit={code} took={took:.1f}s file={content!r} printed={out!r}")


def test_a_session_with_an_image_goes_on(qwen_server, project_dir, user_home):
    """A PNG in a Claude Code session, attached as a user attaches one (`@shot.png`): Qwen
    has no vision, so it reads a placeholder where the image is, and the next turn
    (`--continue`: the whole history, image included, sent again) goes on too."""
    shot = Path(project_dir) / "shot.png"
    shot.write_bytes(png(320, 200))
    log_before = len(qwen_server.log_tail(10**9))
    try:
        for prompt, args in [
            ("What is in @shot.png? Answer in one sentence.", []),
            ("Say that again in five words.", ["--continue"]),
        ]:
            code, out, err, took = run_claude(
                qwen_server.url,
                prompt,
                HELLO_TIMEOUT_S,
                workdir=project_dir,
                home=user_home,
                extra_env=QWEN_ENV,
                args=args,
            )
            report = (
                f"{prompt!r} exit={code} took={took:.1f}s\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}\n"
                f"--- server log ---\n{qwen_server.log_tail(3000)}"
            )
            assert code == 0, report
            assert out.strip() and "API Error" not in out, report
            summary_line(
                f"image session {' '.join(args) or 'first turn'}: took {took:.1f}s, printed {out.strip()[:120]!r}"
            )
    finally:
        shot.unlink(missing_ok=True)
    log = qwen_server.log_tail(10**9)[log_before:]
    # Both turns' requests held the image.
    assert log.count(IMAGES_LOGGED) >= 2, log[-4000:]
    assert "PNG 320×200" in log, log[-4000:]


def test_pensieve_claude_says_hello(qwen_server, project_dir, user_home, cache_dir, tmp_path):
    """`pensieve claude -p "Say hello"`, the one command a user types: with the model named
    in the config file and no server running, it starts one (its prefix cache on disk: the
    module's, so Claude Code's system prompt is already there), runs Claude Code pointed at
    it with the model's name, prints the answer, and stops the server it started."""
    qwen_server.stop()  # writes its prefix cache to cache_dir, and frees the port and CPU
    qwen = model_path(QWEN_CODER)
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_model = "{qwen}"\n'
        f'[server]\nport = {port}\ncache_dir = "{cache_dir}"\n'
        f'[models."{qwen}"]\nctx = 32768\n'
    )
    data_dir = tmp_path / "data"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "PENSIEVE_")) and k not in ("HOME", "XDG_CONFIG_HOME")
    }
    env.update(
        {
            "HOME": user_home,
            "PATH": f"{claude_bin().parent}{os.pathsep}{env.get('PATH', '')}",
            "PENSIEVE_CONFIG": str(config),
            "PENSIEVE_DATA_DIR": str(data_dir),
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "256",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
    )
    started = time.monotonic()
    proc = subprocess.run(
        [str(pensieve_bin()), "claude", "-p", "Say hello"],
        cwd=project_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HELLO_TIMEOUT_S,
        check=False,
    )
    took = time.monotonic() - started
    log_path = data_dir / "logs" / "serve.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else "<no server log>"
    report = (
        f"exit={proc.returncode} took={took:.1f}s\nstdout:\n{proc.stdout[-3000:]}\n"
        f"stderr:\n{proc.stderr[-3000:]}\n--- server log ---\n{log[-4000:]}"
    )
    try:
        assert proc.returncode == 0, report
        assert proc.stdout.strip(), "no text printed:\n" + report
        assert "API Error" not in proc.stdout, report
        # Claude Code asked for the served model by its name.
        # Claude Code asked for the served model by its name, and knew its window.
        done = [line for line in log.splitlines() if "message done" in line]
        assert done and all("model=Qwen2.5-Coder-0.5B-Instruct" in line for line in done), report
        assert "assumes a context window" not in proc.stderr, report
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        prompt = sum(int(m) for m in re.findall(r"prompt_tokens=(\d+)", log))
        cached = sum(int(m) for m in re.findall(r"cached_tokens=(\d+)", log))
        cold = COLD_SESSION.get("seconds")
        ratio = f" = {took / cold:.2f} of the cold session" if cold else ""
        summary_line(
            f"pensieve claude -p 'Say hello' (server started for it, prompt on disk) took {took:.1f}s"
            f"{ratio}; {cached} of {prompt} prompt tokens from the cache; printed: "
            f"{proc.stdout.strip()[:120]!r}"
        )
        # The system prompt and tools, which every session shares, came from disk.
        assert cached >= 0.7 * prompt, report
    finally:
        qwen_server.start()


# Named, the tool is what a 0.5B model needs to reach for it (asked plainly, it answered
# in words here).
QWEN3_FILE_TASK = "Use the Write tool to create hello.txt containing hi"
QWEN3_CODER_TEMPLATE = (
    Path(__file__).resolve().parents[2] / "crates/pensieve-engine/src/template/fixtures/qwen3-coder.jinja"
)


@pytest.fixture(scope="module")
def qwen3_coder_server():
    """The same model under Qwen3-Coder's real chat template: its tool calls are Qwen's
    XML (`<function=...><parameter=...>`), not Hermes' JSON."""
    yield from _serve(QWEN_CODER, ["--ctx", "32768", "--chat-template", str(QWEN3_CODER_TEMPLATE)])


def test_claude_code_on_the_qwen3_coder_template(qwen3_coder_server, project_dir, user_home):
    """`claude -p` with file edits allowed on a model that writes Qwen XML calls: it exits
    0 (or ends in one of the model's own ways), and every call the server made of the
    model's output was well-formed."""
    target = Path(project_dir) / "hello.txt"
    target.unlink(missing_ok=True)
    code, out, err, took = run_claude(
        qwen3_coder_server.url,
        QWEN3_FILE_TASK,
        FILE_TASK_TIMEOUT_S,
        workdir=project_dir,
        home=user_home,
        args=["--permission-mode", "acceptEdits", "--max-turns", FILE_TASK_MAX_TURNS],
        extra_env={**QWEN_ENV, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": FILE_TASK_MAX_TOKENS},
    )
    log = qwen3_coder_server.log_tail(10**9)
    report = (
        f"exit={code} took={took:.1f}s\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}\n"
        f"--- server log ---\n{log[-3000:]}"
    )
    assert code is not None, "Claude Code did not finish:\n" + report
    assert code == 0 or any(m in out + err for m in MODEL_ENDINGS), report
    assert "tool_format=Some(qwen3_coder)" in log, report
    for line in log.splitlines():
        assert not any(m in line for m in MALFORMED_CALL_LOGS), f"malformed tool call: {line}"
    content = target.read_text(errors="replace").strip() if target.exists() else None
    summary_line(
        f"Qwen3-Coder template: claude -p {QWEN3_FILE_TASK!r} exit={code} in {took:.1f}s, "
        f"{log.count('stop=ToolUse')} responses ended in tool calls, hello.txt={content!r}, "
        f"answer: {out.strip()[:120]!r}"
    )
