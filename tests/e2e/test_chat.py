"""`pensieve chat`: piped turns against a running server, a server started for the chat and
stopped after it, and the interactive editor on a pseudo-terminal (Ctrl-C stops an answer)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import ENGINE, SMOLLM2, free_port, mlx_model_dir, model_path, pensieve_bin

TIMEOUT_S = 300


def chat_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PENSIEVE_API_KEY", "PENSIEVE_URL")}
    env["PENSIEVE_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def run_chat(tmp_path: Path, args: list[str], stdin: str, **env: str) -> subprocess.CompletedProcess:
    binary = pensieve_bin()
    if not binary.is_file():
        pytest.fail(f"pensieve binary not found at {binary} (set PENSIEVE_BIN or build it)")
    return subprocess.run(
        [str(binary), "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=chat_env(tmp_path, **env),
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def saved(path: Path) -> dict:
    return json.loads(path.read_text())


def roles(conversation: dict) -> list[str]:
    return [m["role"] for m in conversation["messages"]]


def short(base_url: str, max_tokens: int = 24) -> list[str]:
    return ["--url", base_url, "--max-tokens", str(max_tokens), "--temperature", "0"]


def test_piped_turns_make_one_conversation(base_url, tmp_path):
    out = tmp_path / "conversation.json"
    proc = run_chat(
        tmp_path,
        short(base_url),
        f"Say hello.\nNow say goodbye.\n/save {out}\n",
    )
    assert proc.returncode == 0, describe(proc)
    conversation = saved(out)
    assert roles(conversation) == ["user", "assistant", "user", "assistant"], conversation
    messages = conversation["messages"]
    assert messages[0]["content"] == "Say hello."
    assert messages[2]["content"] == "Now say goodbye."
    answers = [messages[1]["content"], messages[3]["content"]]
    assert all(a.strip() for a in answers), conversation
    # The answers, and nothing else, on stdout, each ending with a newline.
    expected = "".join(a if a.endswith("\n") else a + "\n" for a in answers)
    assert proc.stdout == expected, describe(proc)
    # Without --model, the first model the server lists is asked for.
    listed = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
    assert conversation["model"] == listed
    assert "system" not in conversation


def test_a_block_is_one_turn(base_url, tmp_path):
    out = tmp_path / "conversation.json"
    proc = run_chat(
        tmp_path,
        short(base_url),
        f'"""\nFirst line of one message.\n\n/not a command\n"""\n/save {out}\n',
    )
    assert proc.returncode == 0, describe(proc)
    conversation = saved(out)
    assert roles(conversation) == ["user", "assistant"], conversation
    assert conversation["messages"][0]["content"] == "First line of one message.\n\n/not a command"
    assert conversation["messages"][1]["content"].strip()


def test_system_prompt_command(base_url, tmp_path):
    out = tmp_path / "conversation.json"
    proc = run_chat(
        tmp_path,
        short(base_url),
        f"/system\n/system Be brief.\n/system\nSay hello.\n/save {out}\n",
    )
    assert proc.returncode == 0, describe(proc)
    assert "No system prompt" in proc.stderr, describe(proc)
    assert proc.stdout.startswith("Be brief.\n"), describe(proc)
    conversation = saved(out)
    assert conversation["system"] == "Be brief."
    assert roles(conversation) == ["user", "assistant"], conversation


def test_unknown_command_and_other_commands(base_url, tmp_path):
    out = tmp_path / "conversation.json"
    stdin = "\n".join(
        [
            "/frobnicate now",
            "/retry",
            "Say hello.",
            "/clear",
            "Say goodbye.",
            "/retry",
            "/model some-other-name",
            "/model",
            "/help",
            f"/save {out}",
            "/bye",
            "This is never sent.",
            "",
        ]
    )
    proc = run_chat(tmp_path, short(base_url), stdin)
    assert proc.returncode == 0, describe(proc)
    assert "Unknown command /frobnicate; /help lists the commands." in proc.stderr, describe(proc)
    assert "Nothing to retry." in proc.stderr, describe(proc)
    assert "some-other-name\n" in proc.stdout, describe(proc)
    assert "/retry" in proc.stdout and "/save FILE" in proc.stdout, describe(proc)
    conversation = saved(out)
    # /clear forgot the first exchange; /retry replaced the answer to the second.
    assert roles(conversation) == ["user", "assistant"], conversation
    assert conversation["messages"][0]["content"] == "Say goodbye."
    assert conversation["model"] == "some-other-name"


def test_errors_do_not_end_the_session(auth_server, tmp_path):
    out = tmp_path / "conversation.json"
    # No key: the request fails with the API's message; the session goes on.
    proc = run_chat(
        tmp_path,
        [*short(auth_server.url), "--model", "m"],
        f"Say hello.\n/save {out}\n",
    )
    assert proc.returncode == 0, describe(proc)
    assert re.search(r"^error: .*\(HTTP 401\)$", proc.stderr, re.M), describe(proc)
    assert saved(out)["messages"] == [], "a failed turn is not kept"
    # Without --model the models list is asked for first, which needs the key too.
    proc = run_chat(tmp_path, short(auth_server.url), "Say hello.\n")
    assert proc.returncode == 1, describe(proc)
    assert "/v1/models" in proc.stderr and "401" in proc.stderr, describe(proc)
    # The key from the environment.
    proc = run_chat(tmp_path, short(auth_server.url), "Say hello.\n", PENSIEVE_API_KEY="secret")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip(), describe(proc)


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve_children(port: int) -> str:
    found = subprocess.run(["pgrep", "-af", f"serve --host 127.0.0.1 --port {port}"], capture_output=True, text=True)
    return found.stdout.strip()


def test_starts_a_server_and_stops_it(tmp_path):
    model = mlx_model_dir(SMOLLM2) if ENGINE == "mlx" else model_path(SMOLLM2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "conversation.json"
    proc = run_chat(
        tmp_path,
        ["--url", url, "--model", str(model), "--max-tokens", "16", "--ctx", "2048"],
        f"Say hello.\n/save {out}\n",
    )
    assert proc.returncode == 0, describe(proc)
    log = tmp_path / "data" / "logs" / "serve.log"
    assert f"Starting a server on {url} (log: {log})" in proc.stderr, describe(proc)
    assert proc.stdout.strip(), describe(proc)
    conversation = saved(out)
    assert roles(conversation) == ["user", "assistant"], conversation
    assert conversation["model"] == str(model)
    # The server's output went to the log, not to the terminal.
    text = log.read_text(errors="replace")
    assert "listening" in text, text[-3000:]
    assert "listening" not in proc.stderr
    # Stopped and reaped before the chat exited: nothing listens, no child is left.
    assert not listening(port)
    assert serve_children(port) == ""


def test_nothing_to_talk_to(tmp_path):
    port = free_port()
    # A loopback URL with nothing there and no --model: nothing to start.
    proc = run_chat(tmp_path, ["--url", f"http://127.0.0.1:{port}"], "Say hello.\n")
    assert proc.returncode == 1, describe(proc)
    assert f"no server answers at http://127.0.0.1:{port}" in proc.stderr, describe(proc)
    assert "--model" in proc.stderr
    # A model that cannot load: the server's exit and the end of its log.
    proc = run_chat(
        tmp_path,
        ["--url", f"http://127.0.0.1:{port}", "--model", str(tmp_path / "missing.gguf")],
        "Say hello.\n",
    )
    assert proc.returncode == 1, describe(proc)
    assert "the server exited before it was ready (exit status 1)" in proc.stderr, describe(proc)
    assert "missing.gguf" in proc.stderr, describe(proc)
    assert serve_children(port) == ""
    # A server that is not on this machine is never started (TEST-NET-1: nothing answers).
    started = time.monotonic()
    proc = run_chat(tmp_path, ["--url", "http://192.0.2.1:9", "--model", "m"], "Say hello.\n")
    assert proc.returncode == 1, describe(proc)
    assert "no server answers at http://192.0.2.1:9" in proc.stderr, describe(proc)
    assert "loopback" in proc.stderr, describe(proc)
    assert time.monotonic() - started < 30


class Terminal:
    """`pensieve chat` on a pseudo-terminal of its own (its controlling terminal)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execve(str(pensieve_bin()), [str(pensieve_bin()), "chat", *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        import fcntl
        import struct
        import termios

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.output = ""

    def read_until(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.output, start)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal showed:\n{self.output}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the chat exited while waiting for {pattern!r}:\n{self.output}")
                self.output += data.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Keep draining, so that the chat never blocks on a full terminal.
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        self.kill()
        raise AssertionError(f"the chat did not exit; the terminal showed:\n{self.output}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_interactive_ctrl_c_stops_an_answer(base_url, tmp_path):
    out = tmp_path / "conversation.json"
    env = chat_env(tmp_path, TERM="xterm")
    # At temperature 0 SmolLM2 writes this story up to any --max-tokens.
    prompt = "Write a very long story about a dragon."
    args = ["--url", base_url, "--max-tokens", "3000", "--temperature", "0", "--verbose"]
    term = Terminal(args, env)
    try:
        term.read_until(r">>> ", 60)
        for _attempt in range(3):
            mark = len(term.output)
            term.type(prompt + "\r")
            echoed = term.read_until(re.escape(prompt) + r".*\n", 30, start=mark)
            # The first characters of the answer, then Ctrl-C: the answer stops (a dim line
            # says so) and the prompt comes back.
            term.read_until(r"[^\x1b\s]{3}", 120, start=echoed.end())
            term.type("\x03")
            ended = term.read_until(r"stopped after|tokens/s", 30, start=echoed.end())
            term.read_until(r">>> ", 30, start=ended.end())
            if ended.group(0) == "stopped after":
                break
            # The answer ended on its own before the Ctrl-C came: again, afresh.
            term.type("/clear\r")
            term.read_until(r"Cleared", 10, start=ended.end())
        else:
            raise AssertionError(f"no answer was stopped:\n{term.output}")
        # Ctrl-C at the prompt clears the line; the chat goes on.
        mark = len(term.output)
        term.type("half a line")
        term.read_until(r"half a line", 10, start=mark)
        mark = len(term.output)
        term.type("\x03")
        term.read_until(r">>> ", 10, start=mark)
        term.type(f"/save {out}\r")
        term.read_until(r"Saved the conversation", 10)
        term.type("/bye\r")
        assert term.wait(30) == 0, term.output
    finally:
        term.kill()
    conversation = saved(out)
    assert roles(conversation) == ["user", "assistant"], conversation
    assert conversation["messages"][0]["content"] == prompt
    # What was printed before Ctrl-C is kept as the answer.
    answer = conversation["messages"][1]["content"]
    assert answer.strip(), conversation
    assert answer in term.output.replace("\r\n", "\n"), (answer, term.output)
    history = (tmp_path / "data" / "chat_history").read_text()
    assert prompt in history and "/bye" in history, history
