"""The mlx engine, end to end: `pensieve serve --engine mlx` on an MLX folder converted from
SmolLM2-135M (python/pensieve_mlx/convert.py), its mlx-lm worker supervised by the server.

- the same prompt at temperature 0 gives the same text as mlx-lm's own `generate`;
- a worker killed mid-request ends that stream with an `overloaded_error` event, a new worker
  takes over, and the next request is served;
- stopping the server stops its worker.

The rest of the Anthropic suite runs on this engine too (PENSIEVE_TEST_ENGINE=mlx, see
scripts/test.sh). Needs PENSIEVE_MLX_PYTHON: a Python with mlx and mlx-lm (`pensieve setup mlx`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import anthropic
import httpx
import pytest
from conftest import REQUESTED_MODEL, SMOLLM2, Server, mlx_model_dir, model_path
from helpers import iter_sse

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
MAX_TOKENS = 24


def mlx_python() -> str:
    python = os.environ.get("PENSIEVE_MLX_PYTHON")
    if not python or not Path(python).is_file():
        pytest.fail("PENSIEVE_MLX_PYTHON must name a Python with mlx and mlx-lm (`pensieve setup mlx`)")
    return python


@pytest.fixture(scope="module")
def mlx_server():
    mlx_python()
    server = Server(mlx_model_dir(SMOLLM2), ["--engine", "mlx", "--ctx", "2048", "--parallel", "2"])
    try:
        server.start()
        yield server
    finally:
        server.close()


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: no procps needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def worker_pid(server: Server) -> int:
    assert server.proc is not None
    pids = children(server.proc.pid)
    assert len(pids) == 1, f"expected one worker process under the server, found {pids}"
    return pids[0]


MLX_LM_GENERATE = """
import json, sys
from mlx_lm import generate, load
from mlx_lm.sample_utils import make_sampler
folder, max_tokens, conversations = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
model, tokenizer = load(folder)
out = []
for messages in conversations:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = generate(model, tokenizer, prompt=ids, max_tokens=max_tokens, sampler=make_sampler(temp=0.0))
    out.append({"prompt_tokens": len(ids), "text": text})
print(json.dumps(out))
"""


def test_greedy_output_equals_mlx_lm_generate(mlx_server):
    """The Rust side (template, tokenizer, scheduler, sampling) adds nothing to what mlx-lm
    itself would write: same prompt length, same text."""
    client = anthropic.Anthropic(base_url=mlx_server.url, api_key="x", max_retries=0, timeout=300.0)
    ours = []
    for messages in PROMPTS:
        msg = client.messages.create(
            model=REQUESTED_MODEL, max_tokens=MAX_TOKENS, messages=messages, extra_body={"temperature": 0}
        )
        text = "".join(b.text for b in msg.content if b.type == "text")
        ours.append(
            {
                "prompt_tokens": msg.usage.input_tokens
                + msg.usage.cache_read_input_tokens
                + msg.usage.cache_creation_input_tokens,
                "text": text,
            }
        )
    run = subprocess.run(
        [mlx_python(), "-c", MLX_LM_GENERATE, str(mlx_model_dir(SMOLLM2)), str(MAX_TOKENS), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    for o, t in zip(ours, theirs):
        assert o["prompt_tokens"] == t["prompt_tokens"], (o, t)
        assert o["text"] == t["text"], f"pensieve: {o['text']!r}\nmlx_lm:   {t['text']!r}"
        assert len(o["text"]) > 5, o


def test_a_killed_worker_fails_the_request_and_is_replaced(mlx_server):
    first = worker_pid(mlx_server)
    body = {
        "model": REQUESTED_MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
    }
    events: list[tuple[str, dict]] = []
    streaming = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=mlx_server.url, timeout=300.0) as c:
            with c.stream("POST", "/v1/messages", json=body) as r:
                assert r.status_code == 200
                for name, data in iter_sse(r):
                    events.append((name, data))
                    if name == "content_block_delta":
                        streaming.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert streaming.wait(timeout=240), f"no text streamed\n{mlx_server.log_tail()}"
    os.kill(first, 9)
    reader.join(timeout=240)
    assert not reader.is_alive(), "the stream did not end after its worker died"
    names = [n for n, _ in events]
    assert names[-1] == "error", names[-5:]
    error = events[-1][1]["error"]
    assert error["type"] == "overloaded_error", error
    assert "message_stop" not in names

    # The server is still up, with a new worker, and serves the next request.
    assert mlx_server.alive()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker_pid(mlx_server) == first:
        time.sleep(0.5)
    second = worker_pid(mlx_server)
    assert second != first
    client = anthropic.Anthropic(base_url=mlx_server.url, api_key="x", max_retries=0, timeout=300.0)
    msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=PROMPTS[0])
    assert msg.stop_reason in {"end_turn", "max_tokens"}, msg
    assert msg.content and msg.content[0].text


def test_stopping_the_server_stops_its_worker():
    mlx_python()
    server = Server(mlx_model_dir(SMOLLM2), ["--engine", "mlx", "--ctx", "1024", "--parallel", "1"])
    server.start()
    try:
        worker = worker_pid(server)
        code = server.terminate()
        assert code == 0, f"exit code {code}\n{server.log_tail()}"
    finally:
        server.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    state = ""
    if Path(f"/proc/{worker}/stat").exists():
        state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state in ("", "Z"), f"worker {worker} still running (state {state})"


def _serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `pensieve serve` expecting it to refuse to start; its stderr."""
    from conftest import pensieve_bin

    run = subprocess.run(
        [str(pensieve_bin()), "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode != 0, run.stderr[-2000:]
    assert "panicked" not in run.stderr, run.stderr[-2000:]
    return run.stderr


def test_missing_python_is_a_clear_error(tmp_path):
    err = _serve_fails(
        "--engine",
        "mlx",
        "--model",
        str(mlx_model_dir(SMOLLM2)),
        env={"PENSIEVE_MLX_PYTHON": str(tmp_path / "no-python"), "PENSIEVE_DATA_DIR": str(tmp_path)},
    )
    assert "pensieve setup mlx" in err and "no-python" in err, err


def test_a_python_without_mlx_is_a_clear_error(tmp_path):
    err = _serve_fails(
        "--engine",
        "mlx",
        "--model",
        str(mlx_model_dir(SMOLLM2)),
        env={"PENSIEVE_MLX_PYTHON": "/usr/bin/python3", "PENSIEVE_DATA_DIR": str(tmp_path)},
    )
    assert "No module named 'mlx'" in err and "pensieve setup mlx" in err, err


def test_engine_and_model_kind_must_match(tmp_path):
    err = _serve_fails("--engine", "llama", "--model", str(mlx_model_dir(SMOLLM2)))
    assert "--engine mlx" in err, err
    gguf = model_path(SMOLLM2)
    err = _serve_fails("--engine", "mlx", "--model", str(gguf), env={"PENSIEVE_DATA_DIR": str(tmp_path)})
    assert "--engine llama" in err, err


def test_a_repo_id_in_the_hugging_face_cache_is_served(tmp_path, monkeypatch):
    """`--model org/name` finds the snapshot `refs/main` names in the standard HF cache
    layout, and lists the model under that id."""
    repo = tmp_path / "hub" / "models--pensieve-test--SmolLM2-mlx"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / "0123abcd").symlink_to(mlx_model_dir(SMOLLM2), target_is_directory=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    mlx_python()
    server = Server(Path("pensieve-test/SmolLM2-mlx"), ["--engine", "mlx", "--ctx", "1024", "--parallel", "1"])
    server.start()
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
        assert "pensieve-test/SmolLM2-mlx" in [m["id"] for m in models], models
        client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=300.0)
        msg = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=PROMPTS[0])
        assert msg.content and msg.content[0].text
    finally:
        server.close()
    err = _serve_fails(
        "--engine",
        "mlx",
        "--model",
        "pensieve-test/not-downloaded",
        env={"HF_HUB_CACHE": str(tmp_path / "hub"), "PENSIEVE_DATA_DIR": str(tmp_path)},
    )
    assert "not-downloaded" in err and "Hugging Face cache" in err, err


def test_a_signal_to_the_servers_group_still_saves_the_cache(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the worker must outlive it long
    enough for the server to write its prefix cache through it, so that a restart hits."""
    mlx_python()
    server = Server(
        mlx_model_dir(SMOLLM2),
        ["--engine", "mlx", "--ctx", "1024", "--parallel", "1", "--cache-dir", str(tmp_path / "kv")],
        new_session=True,
    )
    client = lambda: anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=300.0)  # noqa: E731
    server.start()
    try:
        first = client().messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=PROMPTS[1])
        prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log_tail()
        log = server.log_tail(20000)
        assert "cannot save" not in log and "worker died" not in log, log
        server.start()
        again = client().messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=PROMPTS[1])
        assert again.usage.cache_read_input_tokens == prompt - 1, (again.usage, prompt)
    finally:
        server.close()
