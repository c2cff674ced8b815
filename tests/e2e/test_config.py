"""The config file, end to end: `pensieve serve` with no flags takes its model and settings
from it, `PENSIEVE_*` variables override it, flags override both; aliases and the small
model load a second model that `claude-*haiku*` (and other patterns) are routed to."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import GEMMA3, SMOLLM2, free_port, model_path, pensieve_bin, stop_process

STARTUP_S = 120


class Serve:
    """`pensieve serve` with exactly the given flags and environment."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.log = tempfile.NamedTemporaryFile(prefix="pensieve-config-", suffix=".log", delete=False)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PENSIEVE_")}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [str(pensieve_bin()), "serve", "--threads", "2", *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, port: int) -> str:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        pytest.fail(f"serve not ready on port {port}:\n{self.output()[-4000:]}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        os.unlink(self.log.name)


def too_long_limit(url: str) -> int:
    """The context length the server enforces, read from its prompt-too-long error."""
    r = httpx.post(
        f"{url}/v1/messages",
        timeout=60,
        json={"model": "claude-opus-5-5", "max_tokens": 1, "messages": [{"role": "user", "content": "hello " * 5000}]},
    )
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("prompt is too long"), message
    return int(message.split("> ")[1].split(" ")[0])


def test_config_then_env_then_flags(tmp_path):
    smol = model_path(SMOLLM2)
    ports = [free_port() for _ in range(3)]
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_model = "smol"\n[server]\nport = {ports[0]}\n[models.smol]\nmodel = "{smol}"\nctx = 1024\n'
    )
    base = {"PENSIEVE_CONFIG": str(config)}

    # The file alone: its model (listed under its config name), port and per-model ctx.
    server = Serve([], base)
    try:
        url = server.wait_ready(ports[0])
        assert httpx.get(f"{url}/health").json()["model"] == "smol"
        assert too_long_limit(url) == 1023  # one position is kept to generate into
    finally:
        server.stop()

    # Variables over the file.
    server = Serve([], {**base, "PENSIEVE_PORT": str(ports[1]), "PENSIEVE_CTX": "2048"})
    try:
        url = server.wait_ready(ports[1])
        assert too_long_limit(url) == 2047
    finally:
        server.stop()

    # Flags over both.
    server = Serve(
        ["--port", str(ports[2]), "--ctx", "1536"], {**base, "PENSIEVE_PORT": str(ports[1]), "PENSIEVE_CTX": "2048"}
    )
    try:
        url = server.wait_ready(ports[2])
        assert too_long_limit(url) == 1535
    finally:
        server.stop()


def test_small_model_and_aliases_route_to_a_second_model(tmp_path):
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_model = "smol"\nsmall_model = "gemma"\n'
        f"[server]\nport = {port}\n"
        f'[models.smol]\nmodel = "{model_path(SMOLLM2)}"\nctx = 2048\n'
        f'[models.gemma]\nmodel = "{model_path(GEMMA3)}"\nctx = 1024\nparallel = 1\n'
        f'[aliases]\n"gpt-*" = "gemma"\n"my-smol" = "smol"\n'
    )
    server = Serve([], {"PENSIEVE_CONFIG": str(config)})
    try:
        url = server.wait_ready(port)
        health = httpx.get(f"{url}/health").json()
        assert health["models"] == ["smol", "gemma"], health
        assert health["haiku_model"] == "gemma"
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["smol", "gemma"]

        def served_by(name: str) -> str:
            entry = httpx.get(f"{url}/v1/models/{name}").json()
            return entry["display_name"].removeprefix(f"{name} (served by ").rstrip(")")

        assert served_by("claude-haiku-4-5-20251001") == "gemma"
        assert served_by("gpt-4o") == "gemma"
        assert served_by("claude-opus-5-5") == "smol"
        assert served_by("my-smol") == "smol"
        # Each model really answers: Gemma's 1024-token context refuses what SmolLM2's
        # 2048 takes.
        prompt = [{"role": "user", "content": "hello " * 1200}]
        for model, status in [("claude-haiku-4-5", 400), ("claude-opus-5-5", 200)]:
            r = httpx.post(
                f"{url}/v1/messages", timeout=300, json={"model": model, "max_tokens": 2, "messages": prompt}
            )
            assert r.status_code == status, (model, r.text)
            if status == 200:
                assert r.json()["model"] == model
    finally:
        server.stop()


def test_a_bad_config_file_is_named(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nprot = 8080\n")
    server = Serve(["--model", str(model_path(SMOLLM2)), "--port", str(free_port())], {"PENSIEVE_CONFIG": str(config)})
    try:
        assert server.wait_exit() != 0
        out = server.output()
        assert str(config) in out and "prot" in out, out
        assert "panicked" not in out
    finally:
        server.stop()


def test_a_zero_or_unknown_setting_is_refused_by_the_name_it_came_from(tmp_path):
    """`--ctx 0`, `PENSIEVE_PARALLEL=0`, `ctx = 0` in the file and `--gpu-layers most` stop
    `serve` before the model loads, each error naming the setting as the user wrote it."""
    config = tmp_path / "config.toml"
    config.write_text(f'[models.smol]\nmodel = "{model_path(SMOLLM2)}"\nctx = 0\n')
    smol = ["--model", str(model_path(SMOLLM2)), "--port", str(free_port())]
    cases = [
        (smol + ["--ctx", "0"], {}, "--ctx must be at least 1"),
        (smol, {"PENSIEVE_PARALLEL": "0"}, "PENSIEVE_PARALLEL must be at least 1"),
        (smol + ["--parallel", "300"], {}, "--parallel must be at most 256"),
        (
            ["--model", "smol", "--port", str(free_port())],
            {"PENSIEVE_CONFIG": str(config)},
            "ctx in the config file must be at least 1",
        ),
        (smol + ["--gpu-layers", "most"], {}, "neither a number of layers nor `all`"),
    ]
    for args, env, message in cases:
        server = Serve(args, env)
        try:
            assert server.wait_exit() != 0, args
            out = server.output()
            assert message in out and "panicked" not in out, out
        finally:
            server.stop()


def test_health_says_where_the_model_runs(tmp_path):
    """Without a GPU, `--gpu-layers all` still runs on the CPU; with one, every layer is
    offloaded by default. /health names either."""
    port = free_port()
    server = Serve(
        ["--model", str(model_path(SMOLLM2)), "--port", str(port), "--ctx", "1024", "--gpu-layers", "all"], {}
    )
    try:
        url = server.wait_ready(port)
        runs_on = httpx.get(f"{url}/health").json()["runs_on"]
        assert runs_on == "CPU, 2 threads" or "/" in runs_on and "layers" in runs_on, runs_on
        assert f"model loaded on {runs_on}" in server.output()
    finally:
        server.stop()
