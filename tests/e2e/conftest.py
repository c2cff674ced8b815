"""Fixtures for the end-to-end suite: the real `pensieve` binary, serving a real
GGUF model over a real socket, driven by the real clients.

Environment:
  PENSIEVE_BIN          the binary (default: $CARGO_TARGET_DIR/release/pensieve,
                        CARGO_TARGET_DIR defaulting to ~/.cache/pensieve-target)
  PENSIEVE_TEST_MODELS  the models directory (scripts/fetch-test-models.sh)
  PENSIEVE_NPM_PREFIX   where Claude Code is installed (scripts/setup-test-env.sh)
  PENSIEVE_TEST_ENGINE  the engine the model fixtures start: llama (default) or mlx
  PENSIEVE_TEST_MLX_MODELS  MLX folders converted from the test models, one per GGUF, named
                        by its stem (scripts/test.sh makes them)
  PENSIEVE_MLX_PYTHON   the mlx engine's Python (read by `pensieve serve` itself)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

HOME = Path.home()

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_CODER = "Qwen2.5-Coder-0.5B-Instruct.gguf"
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"

# The model name clients ask for; the server must echo it back.
REQUESTED_MODEL = "claude-opus-5-5"

STARTUP_TIMEOUT_S = 120.0

# The model fixtures run the llama engine on the GGUF files, or the mlx engine on MLX
# folders converted from the same files.
ENGINE = os.environ.get("PENSIEVE_TEST_ENGINE", "llama")


def pensieve_bin() -> Path:
    explicit = os.environ.get("PENSIEVE_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(HOME / ".cache" / "pensieve-target")
    return Path(target) / "release" / "pensieve"


def models_dir() -> Path:
    return Path(os.environ.get("PENSIEVE_TEST_MODELS") or HOME / ".cache" / "pensieve" / "test-models")


def model_path(name: str) -> Path:
    path = models_dir() / name
    if not path.is_file():
        pytest.fail(f"test model {path} is missing: run scripts/fetch-test-models.sh")
    return path


def mlx_model_dir(name: str) -> Path:
    """The MLX folder converted from test model `name` (a GGUF file name)."""
    root = os.environ.get("PENSIEVE_TEST_MLX_MODELS") or models_dir() / "mlx"
    path = Path(root) / Path(name).stem
    if not (path / "config.json").is_file():
        pytest.fail(f"MLX test model {path} is missing: scripts/test.sh converts it")
    return path


def claude_bin() -> Path:
    prefix = os.environ.get("PENSIEVE_NPM_PREFIX") or str(HOME / ".cache" / "pensieve" / "npm")
    return Path(prefix) / "node_modules" / ".bin" / "claude"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> bool:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; whether it
    had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return True
    return False


class Server:
    """One running `pensieve serve` process."""

    def __init__(
        self,
        model: Path | None,
        extra_args: list[str],
        api_key: str | None = None,
        new_session: bool = False,
        threads: int = 2,
    ):
        self.model = model
        # A process group of its own, as a terminal gives the server (for group signals).
        self.new_session = new_session
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            str(pensieve_bin()),
            "serve",
            # None: the arguments name the model some other way (--upstream).
            *(["--model", str(model)] if model is not None else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            str(threads),
            *extra_args,
        ]
        if api_key is not None:
            self.args += ["--api-key", api_key]
        self._log_dir = tempfile.TemporaryDirectory(prefix="pensieve-e2e-")
        self.log_path = Path(self._log_dir.name) / "server.log"
        self.proc: subprocess.Popen | None = None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-chars:]

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key} if self.api_key else {}

    def start(self) -> None:
        binary = pensieve_bin()
        if not binary.is_file():
            pytest.fail(f"pensieve binary not found at {binary} (set PENSIEVE_BIN or build it)")
        # Appended to, so that a restarted server's log keeps the earlier run's.
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PENSIEVE_API_KEY")}
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=self.new_session,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                pytest.fail(
                    f"pensieve exited with {code} before it was ready\n"
                    f"command: {' '.join(self.args)}\n--- server log ---\n{self.log_tail()}"
                )
            try:
                r = httpx.get(f"{self.url}/health", headers=self.auth_headers(), timeout=2.0)
                if r.status_code == 200:
                    return
                last_error = f"/health answered {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as e:
                last_error = repr(e)
            time.sleep(0.25)
        self.stop()
        pytest.fail(
            f"pensieve not ready within {STARTUP_TIMEOUT_S:.0f}s ({last_error})\n"
            f"command: {' '.join(self.args)}\n--- server log ---\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def terminate(self, timeout: float = 60.0) -> int:
        """Graceful shutdown (SIGTERM) and its exit status; start() may then run it again
        on the same port with the same arguments."""
        proc = self.proc
        assert proc is not None, "the server was never started"
        if stop_process(proc, timeout):
            pytest.fail(
                f"pensieve did not exit within {timeout:.0f}s of SIGTERM\n--- server log ---\n{self.log_tail()}"
            )
        return proc.returncode

    def close(self) -> None:
        self.stop()
        self._log_dir.cleanup()


def _serve(model: str, extra_args: list[str] | None = None, api_key: str | None = None, threads: int = 2):
    if ENGINE == "mlx":
        server = Server(mlx_model_dir(model), ["--engine", "mlx", *(extra_args or [])], api_key=api_key)
    else:
        server = Server(model_path(model), extra_args or [], api_key=api_key, threads=threads)
    try:
        server.start()
        yield server
    finally:
        server.close()


def serve_front(args: list[str]):
    """A Pensieve that loads no model, serving upstream replicas (`--upstream URL` in `args`)."""
    server = Server(None, args)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True, scope="session")
def _clean_client_env():
    """The SDKs read these; a developer's own settings must not leak into the tests."""
    saved = {}
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        if var in os.environ:
            saved[var] = os.environ.pop(var)
    # Nor a developer's Pensieve config file or model choice: tests that need a config
    # write their own and point PENSIEVE_CONFIG at it.
    for var in (
        "PENSIEVE_CONFIG",
        "PENSIEVE_MODEL",
        "PENSIEVE_SMALL_MODEL",
        "PENSIEVE_PORT",
        "PENSIEVE_HOST",
        "PENSIEVE_CTX",
        "PENSIEVE_PARALLEL",
        "PENSIEVE_THREADS",
        "PENSIEVE_ENGINE",
        "PENSIEVE_CACHE_DIR",
        "PENSIEVE_CACHE_RAM",
        "PENSIEVE_URL",
    ):
        if var in os.environ:
            saved[var] = os.environ.pop(var)
    os.environ["PENSIEVE_CONFIG"] = str(Path(tempfile.gettempdir()) / "pensieve-e2e-no-config.toml")
    yield
    os.environ.pop("PENSIEVE_CONFIG", None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def smol_server():
    """SmolLM2-135M with the default context (the model's 8k), no key."""
    yield from _serve(SMOLLM2)


@pytest.fixture(scope="session")
def small_ctx_server():
    """SmolLM2-135M with a 512-token context, for prompt-too-long checks."""
    yield from _serve(SMOLLM2, ["--ctx", "512"])


@pytest.fixture(scope="session")
def auth_server():
    """SmolLM2-135M that requires the key `secret`."""
    yield from _serve(SMOLLM2, api_key="secret")


@pytest.fixture(scope="session")
def base_url(smol_server) -> str:
    return smol_server.url


@pytest.fixture(scope="session")
def on_gpu(smol_server) -> bool:
    """Whether the model runs on a GPU ("NVIDIA H200 (CUDA), 29/29 layers, ...")."""
    return "layers" in httpx.get(f"{smol_server.url}/health").json()["runs_on"]


@pytest.fixture(scope="session")
def client(smol_server):
    import anthropic

    return anthropic.Anthropic(base_url=smol_server.url, api_key="anything", max_retries=0, timeout=180.0)


@pytest.fixture(scope="session")
def http(smol_server):
    with httpx.Client(base_url=smol_server.url, timeout=180.0) as c:
        yield c


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "claude_code: drives the real Claude Code CLI against the server (slow: minutes of prefill)"
    )


# Lines tests report (measured rates, timings), printed in the run's summary.
REPORT: list[str] = []


def summary_line(line: str) -> None:
    """Print `line` now and again in the summary at the end of the run."""
    print(line)
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("measured")
        for line in REPORT:
            terminalreporter.write_line(line)


# --- The model commands (pull/list/show/rm): a loopback Hugging Face Hub -----------------------

_pytest_configure_before_models = pytest_configure


def pytest_configure(config):  # noqa: F811 - extends the hook above
    _pytest_configure_before_models(config)
    config.addinivalue_line("markers", "slow: downloads the 100 MB test model or starts a server (seconds each)")


@pytest.fixture
def fake_hub():
    """A Hugging Face Hub on loopback (hub_server.FakeHub), empty: tests add repos to it.
    Point the binary at it with HF_ENDPOINT=fake_hub.url."""
    from hub_server import FakeHub

    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()


def closed_port_url() -> str:
    """An http:// URL on loopback that nothing listens on (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"
