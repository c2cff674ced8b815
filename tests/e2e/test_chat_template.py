"""Chat template override, end to end: `serve --chat-template FILE` and `chat_template = "FILE"`
in a `[models.NAME]` section replace the model's own template (the prompt counted and generated
from is the file's), a broken file stops `serve` naming the file, and `show --chat-template`
prints the tool-call format the file teaches."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import (
    ENGINE,
    QWEN_CODER,
    REQUESTED_MODEL,
    SMOLLM2,
    Server,
    free_port,
    mlx_model_dir,
    model_path,
    pensieve_bin,
)
from test_config import Serve

# A line no model's template has, long enough to outweigh any default system prompt
# (SmolLM2's own template adds one of about 15 tokens when the request has none).
MARKER = "Pensieve override marker line. " * 40

# ChatML (SmolLM2's and Qwen's turn format) with the marker as a system turn of its own.
OVERRIDE = (
    "<|im_start|>system\n" + MARKER + "<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Plain ChatML that teaches Hermes-style tool calls.
HERMES = (
    "{% if tools %}<|im_start|>system\nCall a function by writing <tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Plain ChatML that teaches no tool-call format.
PLAIN = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# An unclosed `for`: a Jinja syntax error.
BROKEN = "{% for message in messages %}{{ message.content }}"

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def served_model() -> Path:
    """What the fixtures' engine serves: SmolLM2 as GGUF, or its MLX conversion."""
    return mlx_model_dir(SMOLLM2) if ENGINE == "mlx" else model_path(SMOLLM2)


def engine_args() -> list[str]:
    return ["--engine", "mlx"] if ENGINE == "mlx" else []


def count_tokens(url: str, model: str = REQUESTED_MODEL) -> int:
    r = httpx.post(
        f"{url}/v1/messages/count_tokens",
        timeout=60,
        json={"model": model, "messages": MESSAGES},
    )
    assert r.status_code == 200, r.text
    return r.json()["input_tokens"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENSIEVE_")}
    if "PENSIEVE_MLX_PYTHON" in os.environ:
        env["PENSIEVE_MLX_PYTHON"] = os.environ["PENSIEVE_MLX_PYTHON"]
    env["PENSIEVE_CONFIG"] = os.environ["PENSIEVE_CONFIG"]
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def override_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "override.jinja"
    path.write_text(OVERRIDE)
    return path


@pytest.fixture(scope="module")
def override_server(override_file):
    server = Server(served_model(), [*engine_args(), "--chat-template", str(override_file)])
    try:
        server.start()
        yield server
    finally:
        server.close()


def test_the_flag_replaces_the_models_template(smol_server, override_server, override_file):
    own = count_tokens(smol_server.url)
    replaced = count_tokens(override_server.url)
    # The marker is about 240 tokens; the model's own template has nothing like it.
    assert replaced - own > 150, (own, replaced)
    log = override_server.log_tail(100_000)
    line = next(
        (entry for entry in log.splitlines() if "chat template from the override file" in entry),
        None,
    )
    assert line is not None, log
    assert str(override_file) in line and "the model's own" in line, line
    # Generation runs on the same prompt.
    r = httpx.post(
        f"{override_server.url}/v1/messages",
        timeout=300,
        json={"model": REQUESTED_MODEL, "max_tokens": 3, "messages": MESSAGES},
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["input_tokens"] == replaced


def test_the_config_key_with_home_replaces_the_template(tmp_path, override_server):
    # `~` in chat_template expands to $HOME, as the config's other paths do.
    home = tmp_path / "home"
    (home / "templates").mkdir(parents=True)
    (home / "templates" / "t.jinja").write_text(OVERRIDE)
    port = free_port()
    engine = f'engine = "{ENGINE}"\n'
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_model = "smol"\n[server]\nport = {port}\n'
        f'[models.smol]\nmodel = "{served_model()}"\n{engine}chat_template = "~/templates/t.jinja"\n'
    )
    server = Serve([], clean_env(PENSIEVE_CONFIG=str(config), HOME=str(home)))
    try:
        url = server.wait_ready(port)
        assert count_tokens(url) == count_tokens(override_server.url)
        assert str(home / "templates" / "t.jinja") in server.output()
    finally:
        server.stop()


@pytest.mark.parametrize("case", ["syntax", "missing", "config"])
def test_a_bad_template_stops_serve_naming_the_file(tmp_path, case):
    bad = tmp_path / ("absent.jinja" if case == "missing" else "broken.jinja")
    if case != "missing":
        bad.write_text(BROKEN)
    args = [str(pensieve_bin()), "serve", "--port", str(free_port()), *engine_args()]
    env = clean_env()
    if case == "config":
        config = tmp_path / "config.toml"
        config.write_text(f'[models.smol]\nmodel = "{served_model()}"\nchat_template = "{bad}"\n')
        env["PENSIEVE_CONFIG"] = str(config)
        args += ["--model", "smol"]
    else:
        args += ["--model", str(served_model()), "--chat-template", str(bad)]
    r = subprocess.run(
        args,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode != 0, r.stderr
    assert str(bad) in r.stderr, r.stderr
    assert ("cannot read" if case == "missing" else "syntax error") in r.stderr, r.stderr
    assert "panicked" not in r.stderr
    # It stops before loading the model.
    assert "model loaded" not in r.stderr, r.stderr


def show(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(pensieve_bin()), "show", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )


def tool_calls_line(stdout: str) -> str:
    m = re.search(r"^tool_calls\s+(.+)$", stdout, re.MULTILINE)
    assert m, stdout
    return m.group(1).strip()


def test_show_prints_the_format_an_override_gives(tmp_path):
    hermes = tmp_path / "hermes.jinja"
    hermes.write_text(HERMES)
    plain = tmp_path / "plain.jinja"
    plain.write_text(PLAIN)
    smol = str(model_path(SMOLLM2))
    qwen = str(model_path(QWEN_CODER))

    # SmolLM2's own template teaches no format; one with `<tool_call>` instructions is hermes.
    r = show(smol)
    assert r.returncode == 0, r.stderr
    assert tool_calls_line(r.stdout) == "none detected"
    r = show(smol, "--chat-template", str(hermes))
    assert r.returncode == 0, r.stderr
    assert tool_calls_line(r.stdout) == "hermes"
    assert f"from {hermes} (replaces the model's own)" in r.stdout, r.stdout
    assert "<tool_call>" in r.stdout

    # And the other way: Qwen's hermes template replaced by plain ChatML.
    assert tool_calls_line(show(qwen).stdout) == "hermes"
    info = json.loads(show(qwen, "--json", "--chat-template", str(plain)).stdout)
    assert info["tool_calls"] == "none"
    assert info["chat_template"] == PLAIN
    assert info["chat_template_file"] == str(plain)
    assert json.loads(show(qwen, "--json").stdout)["chat_template_file"] is None


def test_show_names_a_broken_template(tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text(BROKEN)
    r = show(str(model_path(SMOLLM2)), "--chat-template", str(broken))
    assert r.returncode == 1, r
    assert "error:" in r.stderr and str(broken) in r.stderr and "syntax error" in r.stderr, r.stderr
    assert "panicked" not in r.stderr
