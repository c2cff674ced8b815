"""Shared pieces of the benchmark scripts (stdlib only, Python 3.11).

- machine helpers: free ports, /proc readers, idle waiting and the "other CPU" noise gauge;
- `Server`: a server process in its own process group, killed at exit, on errors and signals;
- how each server is started (`llama_command`, `pensieve_command`, `mlx_command`);
- statistics (`summarize`, `percentile`).

The streaming clients are in client.py.

See bench/README.md for what the scripts measure and shared/docs/performance.md for the method.
"""

from __future__ import annotations

import atexit
import http.client
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

LLAMA = "llama-server"
PENSIEVE = "pensieve"
MLX = "mlx"
ALL_SIDES = (LLAMA, PENSIEVE, MLX)

TEST_MODELS = "/root/.cache/pensieve/test-models"
SMOLLM = f"{TEST_MODELS}/SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN = f"{TEST_MODELS}/Qwen2.5-Coder-0.5B-Instruct.gguf"
DEFAULT_LLAMA_BIN = "/root/.cache/pensieve/peers/bin/llama-server"
DEFAULT_MLX_VENV = "/root/.cache/pensieve/peers/mlx-venv"
DEFAULT_PENSIEVE_BIN = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/root/.cache/pensieve-target"), "release", "pensieve"
)

_LOG_TAG = "bench"


def set_log_tag(tag: str) -> None:
    global _LOG_TAG
    _LOG_TAG = tag


def log(msg: str) -> None:
    print(f"[{_LOG_TAG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fnum(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """A Pensieve server's /metrics: each sample line's name (with its labels) -> value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def read_proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def kib_field(status: dict[str, str], key: str) -> int | None:
    v = status.get(key)
    if not v:
        return None
    try:
        return int(v.split()[0])
    except ValueError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    total = sum(parts[:8])  # guest time is already in user
    return total - idle, total


def proc_jiffies(pid: int) -> int:
    """utime + stime of one process (all its threads), in jiffies."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy(interval: float = 1.0) -> float:
    """Fraction of all cores busy over `interval` seconds (0..1)."""
    b0, t0 = cpu_jiffies()
    time.sleep(interval)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_idle(max_wait: float, threshold: float) -> float | None:
    """Wait (up to max_wait s) until the machine is below `threshold` (0..1) busy; returns the
    last sample (None when max_wait <= 0). Other work on a 2-core machine wrecks a 2-thread
    server's timings (its threads spin-wait on each other)."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    warned = False
    while busy > threshold and time.monotonic() < deadline:
        if not warned:
            log(
                f"machine {100 * busy:.0f}% busy before start; waiting up to {max_wait:.0f} s "
                f"for < {100 * threshold:.0f}%"
            )
            warned = True
        time.sleep(4)
        busy = machine_busy()
    if busy > threshold:
        log(f"warning: machine still {100 * busy:.0f}% busy; measuring anyway (see 'other CPU')")
    return busy


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (a Server's group: the server and every child it
    spawned, e.g. pensieve's mlx worker)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def group_jiffies(pgid: int) -> int:
    """utime + stime of every live process of the group (a child that already exited is missed)."""
    return sum(proc_jiffies(p) for p in group_pids(pgid))


def group_peak_rss_kib(pgid: int) -> int | None:
    """Sum of VmHWM over the group's live processes (each one's own peak; an upper bound on the
    group's peak at any one moment)."""
    vals = [kib_field(read_proc_status(p), "VmHWM") for p in group_pids(pgid)]
    vals = [v for v in vals if v]
    return sum(vals) if vals else None


class NoiseGauge:
    """CPU used by anything but the server and this script between start() and stop().
    `group=True` counts every process of the server's process group as the server (a server
    that runs a worker process, like pensieve --engine mlx)."""

    def __init__(self, server_pid: int, group: bool = False):
        self.pid = server_pid
        self._server = (lambda: group_jiffies(server_pid)) if group else (lambda: proc_jiffies(server_pid))
        self.b0, self.t0 = cpu_jiffies()
        self.s0, self.m0 = self._server(), proc_jiffies(os.getpid())

    def stop(self) -> dict:
        b1, t1 = cpu_jiffies()
        s1, m1 = self._server(), proc_jiffies(os.getpid())
        if t1 <= self.t0:
            return {"other_cpu_pct": None, "server_cpu_pct": None}
        foreign = (b1 - self.b0) - (s1 - self.s0) - (m1 - self.m0)
        return {
            "other_cpu_pct": max(0.0, 100.0 * foreign / (t1 - self.t0)),
            "server_cpu_pct": 100.0 * (s1 - self.s0) / (t1 - self.t0),
        }


def nonce() -> str:
    return f"{random.SystemRandom().getrandbits(64):016x}"


# Word list for synthetic text: ordinary English words, so the tokenizer sees ordinary text
# (about 1.2-1.4 tokens a word with a BPE vocabulary).
WORDS = (
    "the a of and to in is was that for on with as by at from it this be are were which or "
    "an have has had not but they their his her its one all would there been if more when "
    "will who so no into time year people way day man thing woman life child world school "
    "state family student group country problem hand part place case week company system "
    "program question work government number night point home water room mother area money "
    "story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office "
    "door health person art war history party result change morning reason research girl guy "
    "moment air teacher force education river mountain light ship harbor storm island bridge "
    "garden window market letter music paper road village winter summer forest field valley "
    "small large old new good great long little own other right big high different early "
    "young important few public bad same able quiet bright dark cold warm slow quick green"
).split()


def synthetic_text(n_words: int, seed: int = 1234) -> str:
    """Deterministic pseudo-English text (paragraphs of 6 sentences)."""
    rng = random.Random(seed)
    sentences = []
    count = 0
    while count < n_words:
        k = rng.randint(8, 18)
        words = [rng.choice(WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
        count += k
    return "\n\n".join(" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6))


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def summarize(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "spread": (max(vals) - min(vals)) / med if med else None,
    }


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100), like numpy's default."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def fmt_stat(s: dict | None, f: str) -> str:
    if not s:
        return "-"
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------


class Server:
    """A server process in its own process group; `health_path` must answer 200 when ready."""

    def __init__(
        self,
        side: str,
        cmd: list[str],
        port: int,
        log_path: Path,
        env: dict | None = None,
        health_path: str = "/health",
    ):
        self.side = side
        self.cmd = cmd
        self.port = port
        self.log_path = log_path
        self.env = env
        self.health_path = health_path
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log_offset = 0

    def start(self, health_timeout: float) -> None:
        log(f"start {self.side}: {' '.join(self.cmd)}")
        self._logf = open(self.log_path, "ab")
        self._logf.write(f"\n===== {time.ctime()} {' '.join(self.cmd)}\n".encode())
        self._logf.flush()
        self._log_offset = self._logf.tell()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )  # own group: we kill all it spawned
        _LIVE.add(self)
        deadline = t0 + health_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.side} exited with code {self.proc.returncode} before "
                    f"becoming healthy; last log lines:\n{self.log_tail()}"
                )
            if self._healthy():
                self.startup_s = time.perf_counter() - t0
                log(f"{self.side} healthy after {self.startup_s:.2f} s (pid {self.proc.pid})")
                return
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{self.side} not healthy after {health_timeout} s; last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", self.health_path)
            r = c.getresponse()
            r.read()
            c.close()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def peak_rss_kib(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return kib_field(read_proc_status(self.proc.pid), "VmHWM")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        else:
            try:  # leader gone; make sure nothing it spawned is left
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc = None
        _LIVE.discard(self)
        try:
            self._logf.close()
        except Exception:  # noqa: BLE001
            pass

    def log_text(self) -> str:
        """What this start of the server has logged so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:]) if lines else "(no log)"


_LIVE: set[Server] = set()


def kill_all() -> None:
    for s in list(_LIVE):
        try:
            s.stop()
        except Exception:  # noqa: BLE001
            pass


atexit.register(kill_all)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """Ctrl-C, kill and hang-up all end in the same cleanup (SIGINT set explicitly: a background
    job of a non-interactive shell would otherwise inherit it ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def server_env() -> dict:
    """The command line is the whole configuration: drop settings a server would read from the
    environment (llama-server's LLAMA_ARG_*, pensieve's API key, which this client doesn't know)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_") and k != "PENSIEVE_API_KEY"}


def binary_version(path: str) -> str:
    try:
        p = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        out = (p.stdout + p.stderr).strip()
        return out[:300] if p.returncode == 0 else f"? (--version exited {p.returncode})"
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def pensieve_flags(path: str) -> set[str]:
    """The long flags `pensieve serve --help` lists (the old engine has no --parallel/--cache-*)."""
    try:
        p = subprocess.run([path, "serve", "--help"], capture_output=True, text=True, timeout=60)
        return set(re.findall(r"(--[a-z][a-z0-9-]*)", p.stdout + p.stderr))
    except Exception:  # noqa: BLE001
        return set()


def check_executable(path: str, hint: str) -> str | None:
    if os.path.isfile(path) and os.access(path, os.X_OK):
        warn_if_stale(path)
        return None
    return f"not found: {path} ({hint})"


def warn_if_stale(path: str) -> None:
    """Warn when a pensieve binary is older than this checkout's Rust sources: a build into
    another target dir (e.g. ./target instead of $CARGO_TARGET_DIR) is easy to miss."""
    if os.path.basename(path) != "pensieve":
        return
    root = Path(__file__).resolve().parent.parent
    sources = [root / "Cargo.lock", *root.glob("crates/**/*.rs")]
    newest = max((p.stat().st_mtime for p in sources if p.is_file()), default=0)
    if os.path.getmtime(path) < newest:
        log(f"warning: {path} is older than the sources in {root}: rebuild it, or pass --pensieve-bin")


def llama_command(
    bin_path: str, model: str, port: int, threads: int, parallel: int, ctx_per_seq: int, extra: list[str]
) -> list[str]:
    """llama-server with `parallel` slots of `ctx_per_seq` tokens each. With an explicit -np this
    build keeps one KV stream per slot (--kv-unified is on only for -np auto), and -c is the
    total, split evenly: -c = parallel * ctx_per_seq. Its host-RAM prompt cache (--cache-ram,
    8192 MiB) stays at its default. `check_llama_slots` verifies the split from its log."""
    return [
        bin_path,
        "-m",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(parallel),
        "-c",
        str(parallel * ctx_per_seq),
        "-t",
        str(threads),
        "--no-webui",
        *extra,
    ]


def check_llama_slots(srv: Server) -> dict:
    """n_slots, n_ctx_slot and kv_unified as llama-server logged them at start."""
    m = re.search(r"n_slots = (\d+), n_ctx_slot = (\d+), kv_unified = '(\w+)'", srv.log_text())
    if not m:
        return {}
    return {"n_slots": int(m.group(1)), "n_ctx_slot": int(m.group(2)), "kv_unified": m.group(3) == "true"}


def pensieve_command(
    bin_path: str,
    model: str,
    port: int,
    threads: int,
    ctx: int,
    extra: list[str],
    parallel: int | None = None,
    cache_dir: str | None = None,
    cache_ram: str | None = None,
) -> list[str]:
    """`pensieve serve`; --parallel/--cache-dir/--cache-ram only when given (the old engine has
    none of them)."""
    cmd = [
        bin_path,
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx",
        str(ctx),
        "--threads",
        str(threads),
    ]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    if cache_ram is not None:
        cmd += ["--cache-ram", cache_ram]
    if cache_dir is not None:
        cmd += ["--cache-dir", cache_dir]
    return cmd + extra


def mlx_command(venv: str, model_dir: str, port: int, extra: list[str]) -> list[str]:
    """mlx_lm.server (OpenAI API only). Threads: MLX's CPU backend picks its own."""
    return [
        os.path.join(venv, "bin", "mlx_lm.server"),
        "--model",
        model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def add_run_options(
    ap, health_timeout: float = 180, request_timeout: float = 600, retry_noisy: int = 2, what: str = "round"
) -> None:
    """The timeout and noise options every benchmark script takes (see bench/README.md, Noise)."""
    ap.add_argument("--health-timeout", type=float, default=health_timeout)
    ap.add_argument("--request-timeout", type=float, default=request_timeout)
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=120,
        metavar="S",
        help="before each server start, wait up to S s for the machine to be idle (0: don't)",
    )
    ap.add_argument(
        "--idle-threshold",
        type=float,
        default=15,
        metavar="PCT",
        help="'idle' means below PCT%% of all cores busy (default 15)",
    )
    ap.add_argument(
        "--max-other-cpu",
        type=float,
        default=15,
        metavar="PCT",
        help=f"a {what} during which other processes used more than PCT%% of the machine "
        "is noisy and is redone (default 15)",
    )
    ap.add_argument(
        "--retry-noisy",
        type=int,
        default=retry_noisy,
        metavar="N",
        help=f"redo a noisy {what} up to N times, then keep it (default {retry_noisy})",
    )
