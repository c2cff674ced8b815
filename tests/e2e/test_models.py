"""The model commands end to end: `pensieve pull`, `list`, `show`, `rm`, and `pensieve serve`
without `--model`, against a Hugging Face Hub on loopback (hub_server.py).

The binary downloads through the real `hf-hub` crate's code path (HF_ENDPOINT points it at the
fake hub), into the standard cache layout under a temporary HF_HOME. The fake hub speaks the
Hub's file API as huggingface.co does: repo info (`/api/models/...`, siblings with sizes, blob ids
and LFS sha256), `resolve` with X-Repo-Commit / ETag, and for LFS files a 302 to another origin
(the "CDN") with X-Linked-Etag / X-Linked-Size, honouring Range requests there. Its protocol was
validated against the official client, huggingface_hub (2.4: hf_hub_download, snapshot_download,
model_info, list_repo_tree, the error classes for missing repo / revision / file and gated repos),
and against hf-hub 0.4.3's tokio `download` and `info`; test_fake_hub_with_huggingface_hub
repeats the first check when a Python with huggingface_hub is at hand (PENSIEVE_HUBCHECK_PYTHON).

Each test has its own HF_HOME, PENSIEVE_CONFIG (a file that does not exist unless the test
writes it) and PENSIEVE_DATA_DIR; HF_TOKEN is unset unless the test sets it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import QWEN_CODER, SMOLLM2, closed_port_url, free_port, model_path, pensieve_bin, stop_process
from helpers import png
from hub_server import FakeHub

SMOL_REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_NAME = f"{SMOL_REPO}:Q4_1"

MLX_REPO = "mlx-community/Tiny-Llama-4bit"

RECOMMENDED_REPO = "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF"
RECOMMENDED_FILE = "qwen2.5-coder-7b-instruct-q4_k_m.gguf"
RECOMMENDED_NAME = f"{RECOMMENDED_REPO}:Q4_K_M"

CHUNK = 10_000_000  # hf-hub's download chunk

SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\b")
UNITS = {
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "kB": 1e3,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
}
PULLED_RE = re.compile(r"^pulled (\S+) \((.+)\)$")
DELETED_RE = re.compile(r"^deleted (\S+) \(([^;)]+)(; .+ still used by other files)?\)$")


# --- Test content --------------------------------------------------------------------------

GGUF_U16, GGUF_U32, GGUF_I32, GGUF_STR = 2, 4, 5, 8
FILE_TYPES = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q6_K": 18,
    "BF16": 32,
}
CHATML_TOOLS_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n'}}{% endfor %}{% if tools %}<tools>{{ tools | tojson }}</tools> Answer with "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call>{% endif %}'
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_gguf(
    *,
    arch: str = "llama",
    ctx: int = 2048,
    file_type: str | None = None,
    name: str = "tiny",
    template: str | None = None,
    split: tuple[int, int] | None = None,
    pad: int = 0,
) -> bytes:
    """A valid GGUF v3 file with metadata and no tensors (what `list`/`show` read)."""
    kv: list[tuple[str, int, object]] = [
        ("general.architecture", GGUF_STR, arch),
        ("general.name", GGUF_STR, name),
        (f"{arch}.context_length", GGUF_U32, ctx),
    ]
    if file_type is not None:
        kv.append(("general.file_type", GGUF_U32, FILE_TYPES[file_type]))
    if template is not None:
        kv.append(("tokenizer.chat_template", GGUF_STR, template))
    if split is not None:
        kv += [
            ("split.no", GGUF_U16, split[0]),
            ("split.count", GGUF_U16, split[1]),
            ("split.tensors.count", GGUF_I32, 0),
        ]
    if pad:
        kv.append(("general.description", GGUF_STR, "x" * pad))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)))
    for key, kind, value in kv:
        k = key.encode()
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", kind)
        if kind == GGUF_STR:
            v = str(value).encode()
            out += struct.pack("<Q", len(v)) + v
        else:
            out += struct.pack({GGUF_U16: "<H", GGUF_U32: "<I", GGUF_I32: "<i"}[kind], value)
    out += b"\0" * (-len(out) % 32)
    return bytes(out)


def safetensors(n_bytes: int, seed: int = 0) -> bytes:
    """A valid safetensors file: one U8 tensor of `n_bytes` pseudo-random bytes."""
    header = json.dumps(
        {
            "__metadata__": {"format": "mlx"},
            "model.embed_tokens.weight": {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]},
        }
    )
    header += " " * (-len(header) % 8)
    data = hashlib.sha256(str(seed).encode()).digest() * (n_bytes // 32 + 1)
    return struct.pack("<Q", len(header)) + header.encode() + data[:n_bytes]


def mlx_files() -> dict[str, bytes]:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "vocab_size": 256,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "quantization": {"group_size": 64, "bits": 4},
    }
    tokenizer_config = {
        "chat_template": CHATML_TOOLS_TEMPLATE,
        "eos_token": "<|im_end|>",
        "bos_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    tokenizer = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode(),
        "special_tokens_map.json": b'{"eos_token": "<|im_end|>"}',
        "model.safetensors": safetensors(3 * 1024 * 1024),
        "README.md": b"# Tiny-Llama-4bit\n\nSynthetic MLX repo for the e2e tests.\n",
    }


def add_smol_repo(hub: FakeHub, repo_id: str = SMOL_REPO, filename: str = SMOL_FILE, **kw):
    """A GGUF repo whose one model file is the real SmolLM2 test model (~94 MiB)."""
    return hub.add_repo(repo_id, {filename: model_path(SMOLLM2), "README.md": b"# SmolLM2 GGUF\n"}, **kw)


def add_quant_repo(hub: FakeHub) -> str:
    """A GGUF repo of tiny files: several quants, a lowercase one, and an mmproj."""
    repo = "test-org/Tiny-GGUF"
    hub.add_repo(
        repo,
        {
            "Tiny-Q4_K_M.gguf": tiny_gguf(file_type="Q4_K_M", name="tiny q4km"),
            "Tiny-Q8_0.gguf": tiny_gguf(file_type="Q8_0", name="tiny q8"),
            "tiny-f16.gguf": tiny_gguf(file_type="F16", name="tiny f16"),
            "mmproj-Tiny-F16.gguf": tiny_gguf(arch="clip", file_type="F16", name="tiny mmproj"),
            "README.md": b"# Tiny\n",
            "config.json": b'{"model_type": "llama"}',
        },
    )
    return repo


def add_no_km_repo(hub: FakeHub) -> str:
    """No Q4_K_M; an mmproj sorts first."""
    repo = "test-org/NoKM-GGUF"
    hub.add_repo(
        repo,
        {
            "mmproj-model-f16.gguf": tiny_gguf(arch="clip", file_type="F16", name="mmproj"),
            "model-Q5_K_S.gguf": tiny_gguf(file_type="Q5_K_S", name="q5ks"),
            "model-Q8_0.gguf": tiny_gguf(file_type="Q8_0", name="q8"),
        },
    )
    return repo


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def assert_size(text: str, expected: int) -> None:
    """`text` shows a human size that rounds from `expected` bytes."""
    m = SIZE_RE.search(text)
    assert m, f"no size like '93.8 MiB' in {text!r}"
    unit = UNITS[m.group(2)]
    shown = float(m.group(1)) * unit
    assert abs(shown - expected) <= max(0.02 * expected, 0.5 * unit), f"{text!r} is not a size of {expected} bytes"


def files_under(d: Path) -> list[Path]:
    """Everything under `d` that is not a directory (symlinks included, dangling or not)."""
    if not d.exists():
        return []
    return sorted(p for p in d.rglob("*") if p.is_symlink() or not p.is_dir())


def range_start(record) -> int:
    m = re.match(r"bytes=(\d+)-", record.range or "")
    assert m, f"GET {record.path} without a Range: {record.range!r}"
    return int(m.group(1))


def data_gets(hub: FakeHub, since: int):
    """Body downloads from the CDN after `since`, not counting 1-byte metadata probes."""
    return [r for r in hub.cdn_gets(since) if r.range != "bytes=0-0"]


def resolved_paths(hub: FakeHub, repo: str, since: int = 0) -> set[str]:
    """The repo files the client asked `resolve` for (any method)."""
    prefix = f"/{repo}/resolve/"
    return {r.path[len(prefix) :].partition("/")[2] for r in hub.requests(since) if r.path.startswith(prefix)}


def downloaded_paths(hub: FakeHub, repo: str, since: int = 0) -> set[str]:
    """The repo files whose bytes were downloaded (beyond a 1-byte probe)."""
    out = set()
    by_sha = {}
    for rev in hub.repo(repo).revisions.values():
        for f in rev.files.values():
            by_sha.setdefault(f.sha256, []).append(f.path)
    prefix = f"/{repo}/resolve/"
    for r in hub.requests(since):
        if r.method != "GET" or r.range == "bytes=0-0" or not r.sent:
            continue
        if r.path.startswith(prefix):
            out.add(r.path[len(prefix) :].partition("/")[2])
        elif r.path.startswith("/cdn/"):
            out.update(by_sha.get(r.path[len("/cdn/") :], []))
    return out


# --- Running the binary --------------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    rc: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"`pensieve {' '.join(self.args)}` exited {self.rc}\n--- stdout ---\n{self.stdout[-4000:]}"
            f"\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def assert_no_panic(text: str) -> None:
    lowered = text.lower()
    assert "panicked" not in lowered and "stack backtrace" not in lowered and "rust_backtrace" not in lowered, text[
        -4000:
    ]


_PULL_SUPPORT: dict[str, str] = {}


def require_model_commands() -> None:
    binary = pensieve_bin()
    if not binary.is_file():
        pytest.fail(f"pensieve binary not found at {binary} (set PENSIEVE_BIN or build it)")
    key = str(binary)
    if key not in _PULL_SUPPORT:
        r = subprocess.run([key, "pull", "--help"], capture_output=True, text=True, timeout=30)
        _PULL_SUPPORT[key] = "" if r.returncode == 0 else (r.stderr or r.stdout)[:500]
    if _PULL_SUPPORT[key]:
        pytest.fail(f"{binary} has no `pull` command yet: {_PULL_SUPPORT[key]}")


def clean_env() -> dict[str, str]:
    drop = ("HF_", "HUGGING_FACE_", "HUGGINGFACE_", "PENSIEVE_", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class Cli:
    """The binary with an environment of its own: HF cache, config and data dir in `root`."""

    def __init__(self, root: Path, endpoint: str):
        self.root = root
        self.hf_home = root / "hf"
        self.config = root / "pensieve.toml"
        self.env = clean_env()
        self.env.update(
            {
                "HF_ENDPOINT": endpoint,
                "HF_HOME": str(self.hf_home),
                "PENSIEVE_CONFIG": str(self.config),
                "PENSIEVE_DATA_DIR": str(root / "data"),
                "NO_COLOR": "1",
            }
        )
        self.procs: list[subprocess.Popen] = []

    @property
    def cache(self) -> Path:
        return Path(self.env.get("HF_HUB_CACHE") or self.hf_home / "hub")

    def repo_dir(self, repo_id: str) -> Path:
        return self.cache / ("models--" + repo_id.replace("/", "--"))

    def snapshot(self, repo_id: str, commit: str) -> Path:
        return self.repo_dir(repo_id) / "snapshots" / commit

    def _env(self, env: dict | None) -> dict[str, str]:
        merged = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return merged

    def run(self, *args: str, env: dict | None = None, timeout: float = 180) -> Run:
        require_model_commands()
        try:
            p = subprocess.run(
                [str(pensieve_bin()), *args],
                capture_output=True,
                text=True,
                env=self._env(env),
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            pytest.fail(
                f"`pensieve {' '.join(args)}` still running after {timeout:.0f}s\n--- stdout ---\n"
                f"{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
            )
        return Run(list(args), p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str, **kw) -> Run:
        r = self.run(*args, **kw)
        assert r.rc == 0, str(r)
        assert_no_panic(r.stderr)
        return r

    def fails(self, *args: str, **kw) -> Run:
        """The command fails as the contract says: exit 1, `error:` on stderr, no panic."""
        r = self.run(*args, **kw)
        assert r.rc == 1, str(r)
        assert "error:" in r.stderr, str(r)
        assert_no_panic(r.stderr + r.stdout)
        return r

    def pull(self, spec: str, *extra: str, **kw) -> tuple[str, str, Run]:
        """A pull that succeeds: (name, size text, run)."""
        r = self.ok("pull", spec, *extra, **kw)
        m = PULLED_RE.match(r.last_line)
        assert m, f"last line of stdout is not `pulled NAME (SIZE)`:\n{r}"
        assert "\r" not in r.stdout, f"progress belongs on stderr:\n{r}"
        return m.group(1), m.group(2), r

    def list_json(self, **kw) -> list[dict]:
        r = self.ok("list", "--json", **kw)
        try:
            entries = json.loads(r.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"`list --json` is not JSON ({e}):\n{r}") from e
        assert isinstance(entries, list), r.stdout
        return entries

    def popen(
        self, *args: str, env: dict | None = None, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) -> subprocess.Popen:
        require_model_commands()
        p = subprocess.Popen(
            [str(pensieve_bin()), *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=self._env(env),
            text=True,
            errors="replace",
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            stop_process(p)


@pytest.fixture
def cli(tmp_path, fake_hub):
    c = Cli(tmp_path, fake_hub.url)
    try:
        yield c
    finally:
        c.close()


def by_name(entries: list[dict], name: str) -> dict:
    found = [e for e in entries if e.get("name") == name]
    assert len(found) == 1, f"expected one entry named {name!r} in {json.dumps(entries, indent=1)}"
    return found[0]


LIST_KEYS = {"name", "path", "size_bytes", "format", "architecture", "quantization", "context_length"}


# --- The fake hub itself -------------------------------------------------------------------


def test_fake_hub_serves_what_hf_hub_reads(fake_hub):
    """The responses hf-hub 0.4.3's metadata() and download_chunk() rely on (no binary needed)."""
    big = tiny_gguf(pad=2_500_000)
    small = b'{"model_type": "llama"}'
    repo = fake_hub.add_repo("org/model", {"model-Q4_0.gguf": big, "config.json": small})
    base = fake_hub.url
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        r = c.get(f"{base}/api/models/org/model/revision/main", params={"blobs": "true"})
        assert r.status_code == 200
        info = r.json()
        assert info["sha"] == repo.commit and len(info["sha"]) == 40
        sib = {s["rfilename"]: s for s in info["siblings"]}
        assert sib["model-Q4_0.gguf"]["lfs"]["sha256"] == hashlib.sha256(big).hexdigest()
        assert sib["model-Q4_0.gguf"]["size"] == len(big) and "lfs" not in sib["config.json"]

        # Non-LFS: 206 on the resolve URL itself, ETag the git blob sha1.
        r = c.get(f"{base}/org/model/resolve/main/config.json", headers={"Range": "bytes=0-0"})
        assert r.status_code == 206 and r.content == small[:1]
        assert r.headers["x-repo-commit"] == repo.commit
        assert r.headers["etag"].strip('"') == hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()
        assert r.headers["content-range"] == f"bytes 0-0/{len(small)}"

        # LFS: 302 to another origin; the CDN serves ranges, clamping an end one past the file.
        r = c.get(f"{base}/org/model/resolve/main/model-Q4_0.gguf", headers={"Range": "bytes=0-0"})
        assert r.status_code == 302
        assert r.headers["x-linked-etag"].strip('"') == hashlib.sha256(big).hexdigest()
        assert int(r.headers["x-linked-size"]) == len(big)
        loc = r.headers["location"]
        assert loc.startswith("http://") and not loc.startswith(base + "/"), loc
        r = c.get(loc, headers={"Range": f"bytes=2000000-{len(big)}"})
        assert r.status_code == 206 and r.content == big[2_000_000:]
        assert r.headers["content-range"] == f"bytes 2000000-{len(big) - 1}/{len(big)}"

        # Errors as the Hub signals them.
        r = c.get(f"{base}/api/models/org/nope")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
        r = c.get(f"{base}/org/model/resolve/nope/config.json")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"
        r = c.get(f"{base}/org/model/resolve/main/nope.json")
        assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"

        # Faults: a flipped byte, a cut connection (once).
        f = repo.file("model-Q4_0.gguf")
        f.corrupt = True
        assert c.get(loc).content != big
        f.corrupt = False
        f.set_drop_after(1_000_000)
        with pytest.raises(httpx.HTTPError):
            c.get(loc)
        assert c.get(loc).content == big

    gated = fake_hub.add_repo("org/gated", {"a.txt": b"hi"}, gated=True)
    r = httpx.get(f"{base}/org/gated/resolve/main/a.txt")
    assert r.status_code == 401 and r.headers["x-error-code"] == "GatedRepo"
    r = httpx.get(f"{base}/org/gated/resolve/main/a.txt", headers={"Authorization": f"Bearer {gated.token}"})
    assert r.status_code == 200 and r.content == b"hi"
    assert fake_hub.requests()[-1].authorization == f"Bearer {gated.token}"


HUBCHECK_SCRIPT = r"""
import hashlib, os, sys
sys.path.insert(0, sys.argv[1])
from hub_server import FakeHub
hub = FakeHub().start()
os.environ["HF_ENDPOINT"] = hub.url  # read when huggingface_hub is imported
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
big = os.urandom(3_000_000)
repo = hub.add_repo("org/model", {"config.json": b"{}", "sub/t.json": b"[]", "model.safetensors": big})
hub.add_repo("org/gated", {"a.bin": b"x" * 10}, gated=True)
p = hf_hub_download("org/model", "model.safetensors", cache_dir=sys.argv[2])
assert open(p, "rb").read() == big and os.path.realpath(p).endswith(hashlib.sha256(big).hexdigest())
d = snapshot_download("org/model", cache_dir=sys.argv[2])
assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "sub"], os.listdir(d)
assert d.endswith(repo.commit)
for call, exc in ((lambda: hf_hub_download("org/nope", "x", cache_dir=sys.argv[2]), RepositoryNotFoundError),
                  (lambda: hf_hub_download("org/gated", "a.bin", cache_dir=sys.argv[2]), GatedRepoError)):
    try:
        call()
        raise SystemExit(f"no {exc.__name__}")
    except exc:
        pass
print("ok")
"""


def test_fake_hub_with_huggingface_hub(tmp_path):
    """The official client downloads from the fake hub (needs a Python with huggingface_hub)."""
    python = os.environ.get("PENSIEVE_HUBCHECK_PYTHON")
    if not python:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            pytest.fail(
                "huggingface_hub is missing: scripts/setup-test-env.sh installs it "
                "(or set PENSIEVE_HUBCHECK_PYTHON to a Python that has it)"
            )
        python = sys.executable
    env = {
        **clean_env(),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    p = subprocess.run(
        [python, "-c", HUBCHECK_SCRIPT, str(Path(__file__).parent), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr


# --- pull ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pull_gguf_into_the_hf_cache(cli, fake_hub):
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    name, size, r = cli.pull(SMOL_REPO)
    assert name == SMOL_NAME, str(r)
    assert_size(size, f.size)

    # The standard layout: refs/main -> commit, snapshots/<commit>/<file> -> ../../blobs/<sha256>.
    repo_dir = cli.repo_dir(SMOL_REPO)
    assert (repo_dir / "refs" / "main").read_text().strip() == repo.commit
    link = cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE
    assert link.is_symlink(), f"{link} is not a symlink into blobs/: {files_under(repo_dir)}"
    blob = repo_dir / "blobs" / f.sha256
    assert link.resolve() == blob.resolve()
    assert sha256_of(blob) == f.sha256
    # Only the chosen GGUF's bytes came down; no token was sent.
    assert downloaded_paths(fake_hub, SMOL_REPO) <= {SMOL_FILE, "README.md"}
    assert all(rec.authorization is None for rec in fake_hub.requests()), fake_hub.requests()


@pytest.mark.slow
def test_pull_again_downloads_nothing(cli, fake_hub):
    repo = add_smol_repo(fake_hub)
    name, size, first = cli.pull(SMOL_REPO)
    mark = fake_hub.mark()
    name2, size2, second = cli.pull(SMOL_REPO)
    assert (name2, size2) == (name, size), f"{first}\n{second}"
    # Only metadata: not one request to the CDN.
    assert fake_hub.cdn_gets(mark) == [], [r.astuple() for r in fake_hub.requests(mark)]
    assert downloaded_paths(fake_hub, SMOL_REPO, mark) <= {"README.md"}
    assert fake_hub.body_bytes(mark) < 1_000_000, [r.astuple() for r in fake_hub.requests(mark)]
    assert sha256_of(cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE) == repo.file(SMOL_FILE).sha256


QUANT_CASES = [
    # (repo maker, spec suffix, expected file, expected quant in the name)
    ("quant", "", "Tiny-Q4_K_M.gguf", "Q4_K_M"),
    ("quant", ":Q8_0", "Tiny-Q8_0.gguf", "Q8_0"),
    ("quant", ":q8_0", "Tiny-Q8_0.gguf", "Q8_0"),
    ("quant", ":F16", "tiny-f16.gguf", "F16"),  # not mmproj-Tiny-F16.gguf
    ("quant", ":Tiny-Q8_0.gguf", "Tiny-Q8_0.gguf", "Q8_0"),
    ("no_km", "", "model-Q5_K_S.gguf", "Q5_K_S"),  # first in sorted order, mmproj skipped
]
# The vision projector each repo has, pulled with any of its quants.
PROJECTORS = {"quant": "mmproj-Tiny-F16.gguf", "no_km": "mmproj-model-f16.gguf"}


@pytest.mark.parametrize(
    "maker,suffix,expected_file,quant",
    QUANT_CASES,
    ids=["default-Q4_K_M", "Q8_0", "q8_0-lowercase", "F16-not-mmproj", "file-name", "default-sorted"],
)
def test_pull_picks_the_gguf(cli, fake_hub, maker, suffix, expected_file, quant):
    repo_id = add_quant_repo(fake_hub) if maker == "quant" else add_no_km_repo(fake_hub)
    repo = fake_hub.repo(repo_id)
    name, size, r = cli.pull(repo_id + suffix)
    assert name.upper() == f"{repo_id}:{quant}".upper(), str(r)
    f = repo.file(expected_file)
    assert_size(size, f.size)
    ggufs = {p for p in downloaded_paths(fake_hub, repo_id) if p.endswith(".gguf")}
    wanted = {expected_file, PROJECTORS[maker]}
    assert ggufs == wanted, f"downloaded {ggufs}, expected only {wanted}\n{r}"
    assert (cli.snapshot(repo_id, repo.commit) / expected_file).is_file()
    # `list` knows it under the name `pull` printed, and lists nothing else (no mmproj).
    entries = cli.list_json()
    assert [e["name"] for e in entries] == [name], json.dumps(entries, indent=1)
    assert entries[0]["path"].endswith(expected_file), entries[0]
    assert entries[0]["format"] == "gguf" and entries[0]["size_bytes"] == f.size, entries[0]


def test_pull_split_gguf_downloads_every_part(cli, fake_hub):
    repo_id = "test-org/Split-GGUF"
    parts = ["split-Q4_K_M-00001-of-00002.gguf", "split-Q4_K_M-00002-of-00002.gguf"]
    repo = fake_hub.add_repo(
        repo_id,
        {
            parts[0]: tiny_gguf(file_type="Q4_K_M", split=(0, 2), pad=1000),
            parts[1]: tiny_gguf(file_type="Q4_K_M", split=(1, 2), pad=3000),
            "split-Q8_0.gguf": tiny_gguf(file_type="Q8_0"),
        },
    )
    name, size, r = cli.pull(repo_id + ":Q4_K_M")
    assert name == f"{repo_id}:Q4_K_M", str(r)
    total = sum(repo.file(p).size for p in parts)
    assert_size(size, total)
    assert downloaded_paths(fake_hub, repo_id) == set(parts), str(r)
    for p in parts:
        assert sha256_of(cli.snapshot(repo_id, repo.commit) / p) == repo.file(p).sha256
    entries = cli.list_json()
    assert [e["name"] for e in entries] == [name], json.dumps(entries, indent=1)
    assert entries[0]["size_bytes"] == total, entries[0]


def test_pull_whole_mlx_repo(cli, fake_hub):
    files = mlx_files()
    repo = fake_hub.add_repo(MLX_REPO, files)
    name, size, r = cli.pull(MLX_REPO)
    assert name == MLX_REPO, str(r)
    assert_size(size, sum(len(b) for b in files.values()))
    snap = cli.snapshot(MLX_REPO, repo.commit)
    for path, data in files.items():
        assert (snap / path).read_bytes() == data, path
    assert (cli.repo_dir(MLX_REPO) / "refs" / "main").read_text().strip() == repo.commit


def test_pull_revision(cli, fake_hub):
    repo_id = "test-org/Rev-GGUF"
    repo = fake_hub.add_repo(repo_id, {"rev-Q8_0.gguf": tiny_gguf(file_type="Q8_0", ctx=1024)})
    v2 = repo.add_revision("v2", {"rev-Q8_0.gguf": tiny_gguf(file_type="Q8_0", ctx=4096)})
    name, _, r = cli.pull(repo_id, "--revision", "v2")
    assert name.startswith(repo_id), str(r)
    path = cli.snapshot(repo_id, v2.commit) / "rev-Q8_0.gguf"
    assert path.is_file(), f"{path} missing: {files_under(cli.repo_dir(repo_id))}\n{r}"
    assert sha256_of(path) == v2.files["rev-Q8_0.gguf"].sha256
    assert not cli.snapshot(repo_id, repo.commit).exists()


def test_pull_unknown_revision(cli, fake_hub):
    repo_id = "test-org/Rev-GGUF"
    fake_hub.add_repo(repo_id, {"rev-Q8_0.gguf": tiny_gguf(file_type="Q8_0")})
    r = cli.fails("pull", repo_id, "--revision", "no-such-branch")
    assert "no-such-branch" in r.stderr, str(r)


@pytest.mark.parametrize("status", [404, 401], ids=["404", "401-as-the-real-hub-without-token"])
def test_pull_unknown_repo(cli, fake_hub, status):
    fake_hub.missing_repo_status = status
    r = cli.fails("pull", "test-org/does-not-exist")
    assert "test-org/does-not-exist" in r.stderr and "not found" in r.stderr.lower(), str(r)


def test_pull_unknown_tag_lists_the_quants(cli, fake_hub):
    repo_id = add_quant_repo(fake_hub)
    r = cli.fails("pull", repo_id + ":Q5_K_S")
    assert "Q5_K_S" in r.stderr, str(r)
    for quant in ("Q4_K_M", "Q8_0", "F16"):
        assert quant.lower() in r.stderr.lower(), f"{quant} not among the available quants:\n{r}"
    assert data_gets(fake_hub, 0) == [], [x.astuple() for x in fake_hub.requests()]


def test_pull_unreachable_hub(cli):
    t0 = time.monotonic()
    r = cli.fails("pull", SMOL_REPO, env={"HF_ENDPOINT": closed_port_url()}, timeout=60)
    assert "cannot reach" in r.stderr.lower(), str(r)
    assert time.monotonic() - t0 < 30, f"took {time.monotonic() - t0:.0f}s"


@pytest.mark.slow
def test_pull_corrupted_download_leaves_nothing(cli, fake_hub):
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    f.corrupt = True
    r = cli.fails("pull", SMOL_REPO)
    assert "sha256 mismatch" in r.stderr.lower(), str(r)
    repo_dir = cli.repo_dir(SMOL_REPO)
    snap_file = cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE
    assert not os.path.lexists(snap_file), f"{snap_file} left behind: {files_under(repo_dir)}"
    bad_blobs = [p for p in files_under(repo_dir / "blobs") if not p.name.endswith(".lock")]
    assert bad_blobs == [], f"bad download left in blobs/: {bad_blobs}"
    assert [p for p in files_under(repo_dir / "snapshots") if p.name.endswith(".gguf")] == []
    assert cli.list_json() == []
    # The hub serves good bytes again: the same command now succeeds.
    f.corrupt = False
    cli.pull(SMOL_REPO)
    assert sha256_of(snap_file) == f.sha256


def test_pull_gated_repo_needs_hf_token(cli, fake_hub):
    repo_id = "test-org/Gated-GGUF"
    repo = fake_hub.add_repo(repo_id, {"gated-Q8_0.gguf": tiny_gguf(file_type="Q8_0")}, gated=True)
    r = cli.fails("pull", repo_id)
    assert "HF_TOKEN" in r.stderr, str(r)
    mark = fake_hub.mark()
    name, _, r = cli.pull(repo_id, env={"HF_TOKEN": repo.token})
    assert name == f"{repo_id}:Q8_0", str(r)
    hub_requests = [x for x in fake_hub.requests(mark) if not x.path.startswith("/cdn/")]
    assert hub_requests and all(x.authorization == f"Bearer {repo.token}" for x in hub_requests), [
        x.astuple() for x in hub_requests
    ]
    assert (cli.snapshot(repo_id, repo.commit) / "gated-Q8_0.gguf").is_file()


def test_pull_private_repo_with_hf_token(cli, fake_hub):
    repo_id = "test-org/Private-GGUF"
    repo = fake_hub.add_repo(repo_id, {"private-Q8_0.gguf": tiny_gguf(file_type="Q8_0")}, private=True)
    r = cli.fails("pull", repo_id)
    assert "not found" in r.stderr.lower() or "HF_TOKEN" in r.stderr, str(r)
    name, _, r = cli.pull(repo_id, env={"HF_TOKEN": repo.token})
    assert name == f"{repo_id}:Q8_0", str(r)


@pytest.mark.slow
def test_pull_interrupted_by_ctrl_c_resumes(cli, fake_hub):
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    assert f.size > 30_000_000
    f.throttle_bps = 15_000_000
    proc = cli.popen("pull", SMOL_REPO)
    deadline = time.monotonic() + 60
    while f.sent < 25_000_000:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"pull exited {proc.returncode} after {f.sent} bytes\n{out}\n{err}")
        assert time.monotonic() < deadline, f"only {f.sent} bytes sent in 60s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("pull still running 30s after SIGINT")
    assert proc.returncode != 0, f"pull exited 0 after SIGINT\n{out}\n{err}"
    assert_no_panic(err)
    repo_dir = cli.repo_dir(SMOL_REPO)
    assert files_under(repo_dir / "snapshots") == [], f"a file in snapshots/ after Ctrl-C: {files_under(repo_dir)}"
    partial = files_under(repo_dir / "blobs")
    first_run = [(x.range, x.sent) for x in data_gets(fake_hub, 0)]

    f.throttle_bps = None
    mark = fake_hub.mark()
    name, _, r = cli.pull(SMOL_REPO)
    assert name == SMOL_NAME
    gets = data_gets(fake_hub, mark)
    assert gets, [x.astuple() for x in fake_hub.requests(mark)]
    # hf-hub fetches the first chunk first, the others in any order; what it committed (the
    # contiguous prefix, at least the first chunk) is not fetched again.
    first = min(gets, key=range_start)
    assert range_start(first) >= CHUNK, (
        f"the second pull fetched {first.range}, not only what the first lacked; blobs/ held {partial}; "
        f"the first pull fetched, in order: {first_run}\n{r}"
    )
    sent = sum(x.sent for x in fake_hub.cdn_gets(mark))
    assert sent < f.size, f"the second pull downloaded {sent} of {f.size} bytes"
    assert sha256_of(cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE) == f.sha256


@pytest.mark.slow
def test_pull_dropped_connection_then_rerun(cli, fake_hub):
    """The connection dies mid-download, and again on every retry: the pull fails and says to
    run the command again; that run resumes and completes."""
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    f.drops = [25_000_000] + [3_000_000] * 50  # a retry never gets a whole 10 MB chunk
    r = cli.run("pull", SMOL_REPO)
    assert r.rc != 0, f"the pull succeeded although every connection died:\n{r}"
    assert "error:" in r.stderr, str(r)
    assert_no_panic(r.stderr)
    low = r.stderr.lower()
    assert "interrupted" in low or "resume" in low, f"no hint to run the command again:\n{r}"
    assert files_under(cli.repo_dir(SMOL_REPO) / "snapshots") == []
    f.drops = []
    mark = fake_hub.mark()
    name, _, r = cli.pull(SMOL_REPO)
    assert name == SMOL_NAME
    gets = data_gets(fake_hub, mark)
    assert gets and min(map(range_start, gets)) >= CHUNK, [x.astuple() for x in fake_hub.requests(mark)]
    assert sha256_of(cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE) == f.sha256


@pytest.mark.slow
def test_pull_one_dropped_connection(cli, fake_hub):
    """One cut connection: the pull either resumes by itself or fails with the hint to run it
    again (then that run resumes); either way the file comes out whole."""
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    f.set_drop_after(25_000_000)
    r = cli.run("pull", SMOL_REPO)
    assert_no_panic(r.stderr)
    if r.rc != 0:
        low = r.stderr.lower()
        assert "error:" in low and ("interrupted" in low or "resume" in low), str(r)
        mark = fake_hub.mark()
        cli.pull(SMOL_REPO)
        assert min(map(range_start, data_gets(fake_hub, mark))) >= CHUNK
    else:
        # (No bound on the bytes: hf-hub 0.4.3 fetches chunks out of order and leaves the failed
        # attempt's chunk tasks running, so a retry in the same process may fetch much twice.)
        assert PULLED_RE.match(r.last_line), str(r)
    assert sha256_of(cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE) == f.sha256


@pytest.mark.slow
def test_pull_repairs_a_corrupt_cached_blob(cli, fake_hub):
    repo = add_smol_repo(fake_hub)
    f = repo.file(SMOL_FILE)
    cli.pull(SMOL_REPO)
    blob = cli.repo_dir(SMOL_REPO) / "blobs" / f.sha256
    with open(blob, "r+b") as fh:  # garbage in the middle, the size unchanged
        fh.seek(f.size // 2)
        fh.write(os.urandom(1 << 20))
    assert blob.stat().st_size == f.size and sha256_of(blob) != f.sha256
    mark = fake_hub.mark()
    name, _, r = cli.pull(SMOL_REPO)
    assert name == SMOL_NAME
    low = r.stderr.lower()
    assert "corrupt" in low or "mismatch" in low, f"the bad blob was not reported:\n{r}"
    assert data_gets(fake_hub, mark), "nothing was downloaded again"
    assert sha256_of(cli.snapshot(SMOL_REPO, repo.commit) / SMOL_FILE) == f.sha256


def test_hf_hub_cache_overrides_hf_home(cli, fake_hub, tmp_path):
    repo_id = add_quant_repo(fake_hub)
    repo = fake_hub.repo(repo_id)
    other = tmp_path / "elsewhere"
    cli.env["HF_HUB_CACHE"] = str(other)
    name, _, r = cli.pull(repo_id + ":Q8_0")
    assert (other / f"models--{repo_id.replace('/', '--')}" / "snapshots" / repo.commit / "Tiny-Q8_0.gguf").is_file(), (
        f"{files_under(other)}\n{r}"
    )
    assert not (cli.hf_home / "hub").exists() or files_under(cli.hf_home / "hub") == []
    assert [e["name"] for e in cli.list_json()] == [name]


# --- list / show ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    """One cache holding the SmolLM2 GGUF repo and the MLX repo, pulled once for the module."""
    root = tmp_path_factory.mktemp("pulled")
    with FakeHub() as hub:
        add_smol_repo(hub)
        hub.add_repo(MLX_REPO, mlx_files())
        c = Cli(root, hub.url)
        c.pull(SMOL_REPO)
        c.pull(MLX_REPO)
    # The hub is gone: list and show work offline.
    c.env["HF_ENDPOINT"] = closed_port_url()
    yield c
    c.close()


@pytest.mark.slow
def test_list_json(pulled):
    entries = pulled.list_json()
    assert len(entries) == 2, json.dumps(entries, indent=1)
    for e in entries:
        assert LIST_KEYS <= set(e), e
        assert Path(e["path"]).exists(), e
    smol = by_name(entries, SMOL_NAME)
    assert smol["format"] == "gguf"
    assert smol["architecture"] == "llama"
    assert smol["quantization"] == "Q4_1"
    assert smol["context_length"] == 8192
    assert smol["size_bytes"] == model_path(SMOLLM2).stat().st_size
    assert sha256_of(Path(smol["path"])) == sha256_of(model_path(SMOLLM2))
    mlx = by_name(entries, MLX_REPO)
    assert mlx["format"] == "mlx"
    assert mlx["architecture"] == "llama"
    assert mlx["context_length"] == 2048
    assert Path(mlx["path"]).is_dir() and (Path(mlx["path"]) / "config.json").is_file(), mlx
    assert mlx["size_bytes"] >= 3 * 1024 * 1024, mlx


@pytest.mark.slow
def test_list_text(pulled):
    r = pulled.ok("list")
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines and re.match(r"^NAME\s+SIZE\s+FORMAT\s+ARCH\s+QUANT\s+CONTEXT\s*$", lines[0]), str(r)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {SMOL_NAME, MLX_REPO}, str(r)
    smol = rows[SMOL_NAME].split()
    assert {"gguf", "llama", "Q4_1", "8192"} <= set(smol), rows[SMOL_NAME]
    assert_size(rows[SMOL_NAME], model_path(SMOLLM2).stat().st_size)
    assert {"mlx", "llama"} <= set(rows[MLX_REPO].split()), rows[MLX_REPO]


def test_list_empty_cache(cli):
    assert cli.list_json() == []
    cli.ok("list")


def test_list_skips_what_no_engine_runs(cli):
    # A repo with only a README, a dataset, and a half-downloaded blob: not models.
    notes = cli.cache / "models--junk--notes"
    commit = "0" * 40
    (notes / "snapshots" / commit).mkdir(parents=True)
    (notes / "snapshots" / commit / "README.md").write_text("# notes\n")
    (notes / "refs").mkdir()
    (notes / "refs" / "main").write_text(commit)
    data = cli.cache / "datasets--junk--data" / "snapshots" / commit
    data.mkdir(parents=True)
    (data / "train.gguf").write_bytes(tiny_gguf(file_type="Q8_0"))
    partial = cli.cache / "models--junk--partial"
    (partial / "blobs").mkdir(parents=True)
    (partial / "blobs" / ("a" * 64 + ".sync.part")).write_bytes(b"\0" * 100)
    assert cli.list_json() == []


def test_list_includes_models_named_in_the_config(cli):
    smol = model_path(SMOLLM2)
    cli.config.write_text(f'[models.smol]\nmodel = "{smol}"\n')
    entries = cli.list_json()
    entry = by_name(entries, "smol")
    assert Path(entry["path"]).resolve() == smol.resolve(), entry
    assert entry["format"] == "gguf" and entry["quantization"] == "Q4_1" and entry["context_length"] == 8192, entry
    assert entry["size_bytes"] == smol.stat().st_size


@pytest.mark.slow
def test_show_gguf_json(pulled):
    r = pulled.ok("show", SMOL_NAME, "--json")
    info = json.loads(r.stdout)
    assert info["name"] == SMOL_NAME
    assert Path(info["path"]).is_file()
    assert info["format"] == "gguf"
    assert info["architecture"] == "llama"
    assert info["quantization"] == "Q4_1"
    assert info["context_length"] == 8192
    assert "<|im_start|>" in info["chat_template"]
    assert info["tool_calls"] == "none"


@pytest.mark.slow
def test_show_gguf_text(pulled):
    r = pulled.ok("show", SMOL_NAME)
    out = r.stdout
    for key in (
        "name",
        "path",
        "format",
        "architecture",
        "quantization",
        "context_length",
        "chat_template",
        "tool_calls",
    ):
        assert re.search(rf"^\s*{key}\b", out, re.M), f"no `{key}` line:\n{out}"
    for value in (SMOL_NAME, "gguf", "llama", "Q4_1", "8192", "<|im_start|>", "none"):
        assert value in out, f"{value!r} not shown:\n{out}"


@pytest.mark.slow
def test_show_mlx(pulled):
    info = json.loads(pulled.ok("show", MLX_REPO, "--json").stdout)
    assert info["name"] == MLX_REPO
    assert info["format"] == "mlx"
    assert info["architecture"] == "llama"
    assert "<tool_call>" in (info.get("chat_template") or ""), info
    assert info["tool_calls"] == "hermes"


def test_show_path_qwen_coder_is_hermes(cli):
    info = json.loads(cli.ok("show", str(model_path(QWEN_CODER)), "--json").stdout)
    assert info["format"] == "gguf"
    assert info["architecture"] == "qwen2"
    assert info["context_length"] == 32768
    assert info["tool_calls"] == "hermes"
    assert "<tool_call>" in info["chat_template"]


def test_show_path_smollm2(cli):
    info = json.loads(cli.ok("show", str(model_path(SMOLLM2)), "--json").stdout)
    assert (info["format"], info["architecture"], info["quantization"], info["context_length"]) == (
        "gguf",
        "llama",
        "Q4_1",
        8192,
    ), info
    assert info["tool_calls"] == "none"


def test_show_unknown_model(cli):
    r = cli.fails("show", "nobody/nothing:Q4_0")
    assert "not found" in r.stderr.lower(), str(r)
    assert "pensieve list" in r.stderr or "pensieve pull" in r.stderr, str(r)


# --- rm ------------------------------------------------------------------------------------


def test_rm_keeps_blobs_other_snapshot_files_use(cli, fake_hub):
    repo_id = "test-org/Shared-GGUF"
    same = tiny_gguf(name="same bytes", pad=5000)  # no file_type: the quant is the file name's
    repo = fake_hub.add_repo(
        repo_id,
        {
            "shared-Q4_0.gguf": same,
            "shared-Q8_0.gguf": same,
            "shared-Q4_K_M.gguf": tiny_gguf(file_type="Q4_K_M", name="other bytes"),
        },
    )
    for quant in ("Q4_0", "Q8_0", "Q4_K_M"):
        assert cli.pull(f"{repo_id}:{quant}")[0] == f"{repo_id}:{quant}"
    blobs = cli.repo_dir(repo_id) / "blobs"
    snap = cli.snapshot(repo_id, repo.commit)
    same_blob = blobs / repo.file("shared-Q4_0.gguf").sha256
    other_blob = blobs / repo.file("shared-Q4_K_M.gguf").sha256

    r = cli.ok("rm", f"{repo_id}:Q4_0")
    m = DELETED_RE.match(r.last_line)
    assert m and m.group(1) == f"{repo_id}:Q4_0", str(r)
    assert_size(m.group(2), len(same))
    assert m.group(3), f"the kept blob is not mentioned: {r}"
    assert not os.path.lexists(snap / "shared-Q4_0.gguf")
    assert same_blob.is_file(), "a blob another snapshot file links to was deleted"
    assert (snap / "shared-Q8_0.gguf").read_bytes() == same
    assert sorted(e["name"] for e in cli.list_json()) == [f"{repo_id}:Q4_K_M", f"{repo_id}:Q8_0"]

    cli.ok("rm", f"{repo_id}:Q4_K_M")
    assert not other_blob.exists() and not os.path.lexists(snap / "shared-Q4_K_M.gguf")
    assert same_blob.is_file()

    r = cli.ok("rm", f"{repo_id}:Q8_0")
    assert DELETED_RE.match(r.last_line), str(r)
    assert not cli.repo_dir(repo_id).exists(), f"left behind: {files_under(cli.repo_dir(repo_id))}"
    assert cli.list_json() == []


def test_rm_whole_mlx_repo(cli, fake_hub):
    files = mlx_files()
    fake_hub.add_repo(MLX_REPO, files)
    cli.pull(MLX_REPO)
    r = cli.ok("rm", MLX_REPO)
    m = DELETED_RE.match(r.last_line)
    assert m and m.group(1) == MLX_REPO, str(r)
    assert_size(m.group(2), sum(len(b) for b in files.values()))
    assert not cli.repo_dir(MLX_REPO).exists(), files_under(cli.repo_dir(MLX_REPO))
    assert cli.list_json() == []


def test_rm_unknown_model(cli):
    r = cli.fails("rm", "nobody/nothing:Q4_0")
    assert "not found" in r.stderr.lower(), str(r)


# --- serve ---------------------------------------------------------------------------------


class ServeProc:
    """`pensieve serve` with its stderr in a file, read while it runs."""

    def __init__(self, cli: Cli, args: list[str], env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cli.root / f"serve-{self.port}.log"
        self._log_file = open(self.log, "wb")
        env = {"RUST_LOG": "info", **(env or {})}
        self.proc = cli.popen(
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "2",
            *args,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited {self.proc.returncode} before /health answered\n{self.output()[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"serve not healthy within {timeout:.0f}s\n{self.output()[-6000:]}")
            time.sleep(0.1)

    def model_ids(self) -> list[str]:
        r = httpx.get(f"{self.url}/v1/models", timeout=10)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["data"]]

    def close(self) -> None:
        stop_process(self.proc, timeout=20)
        self._log_file.close()


@pytest.fixture
def serve(cli):
    started: list[ServeProc] = []

    def start(args: list[str], env: dict | None = None) -> ServeProc:
        s = ServeProc(cli, args, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.mark.slow
def test_serve_without_model_pulls_the_recommended_one(cli, fake_hub, serve):
    repo = add_smol_repo(fake_hub, RECOMMENDED_REPO, RECOMMENDED_FILE)
    f = repo.file(RECOMMENDED_FILE)
    f.throttle_bps = 40_000_000  # a couple of seconds: long enough to see what comes first
    s = serve([], env={"PENSIEVE_RECOMMENDED_MODEL": RECOMMENDED_NAME})
    # The name and a size are on stderr before the download ends (and before /health answers).
    announced_at_bytes = None
    deadline = time.monotonic() + 120
    while True:
        text = s.output()
        lines = [line for line in text.splitlines() if RECOMMENDED_REPO in line or "Qwen2.5-Coder-7B-Instruct" in line]
        if lines and SIZE_RE.search("\n".join(lines)):
            announced_at_bytes = f.sent
            break
        if s.healthy() or s.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert announced_at_bytes is not None, (
        f"the recommended model and its size were not announced:\n{s.output()[-6000:]}"
    )
    assert announced_at_bytes < f.size, "announced only after the download"
    s.wait_healthy()
    assert RECOMMENDED_NAME in s.model_ids(), s.model_ids()
    assert (cli.snapshot(RECOMMENDED_REPO, repo.commit) / RECOMMENDED_FILE).is_file()
    assert_no_panic(s.output())


def test_serve_without_model_hub_unreachable(cli, serve):
    t0 = time.monotonic()
    s = serve([], env={"HF_ENDPOINT": closed_port_url(), "PENSIEVE_RECOMMENDED_MODEL": RECOMMENDED_NAME})
    try:
        s.proc.wait(timeout=25)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve still running after 25s with the hub unreachable\n{s.output()[-4000:]}")
    elapsed = time.monotonic() - t0
    out = s.output()
    assert s.proc.returncode != 0, out
    assert elapsed < 20, f"took {elapsed:.0f}s"
    assert "cannot reach" in out.lower(), out
    assert "--model" in out and "pensieve list" in out, f"no offline options named:\n{out}"
    assert_no_panic(out)


@pytest.mark.slow
def test_a_pulled_vision_model_sees_images(cli, fake_hub, serve, tmp_path):
    """A repo with an mmproj beside the model: pull fetches it, serve loads it, an image counts
    as its tokens. The projector is a random-weight one for SmolLM2 (make-test-mmproj.py)."""
    mmproj = tmp_path / "mmproj-SmolLM2-F16.gguf"
    script = Path(__file__).resolve().parents[2] / "scripts" / "make-test-mmproj.py"
    other = tmp_path / "mmproj-SmolLM2-F32.gguf"
    for out, seed in ((mmproj, "0"), (other, "1")):
        make = [sys.executable, str(script), "--model", str(model_path(SMOLLM2)), "--out", str(out), "--seed", seed]
        subprocess.run(make, check=True)
    repo = fake_hub.add_repo(
        "test-org/SmolVision-GGUF",
        {SMOL_FILE: model_path(SMOLLM2), mmproj.name: mmproj, other.name: other},
    )
    name, _, r = cli.pull("test-org/SmolVision-GGUF")
    assert downloaded_paths(fake_hub, "test-org/SmolVision-GGUF") == {SMOL_FILE, "mmproj-SmolLM2-F16.gguf"}, str(r)
    assert (cli.snapshot("test-org/SmolVision-GGUF", repo.commit) / "mmproj-SmolLM2-F16.gguf").is_file()
    s = serve(["--model", name])
    s.wait_healthy()
    assert "vision projector loaded" in s.output(), s.output()[-3000:]

    def count(content) -> int:
        r = httpx.post(
            f"{s.url}/v1/messages/count_tokens",
            timeout=120,
            json={"model": name, "messages": [{"role": "user", "content": content}]},
        )
        assert r.status_code == 200, r.text
        return r.json()["input_tokens"]

    data = base64.b64encode(png(64, 48)).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    assert count([{"type": "text", "text": "What?"}, image]) >= count("What? x") + 10


@pytest.mark.slow
def test_serve_cached_model_offline(cli, fake_hub, serve):
    add_smol_repo(fake_hub)
    cli.pull(SMOL_REPO)
    fake_hub.stop()
    s = serve(["--model", SMOL_NAME], env={"HF_ENDPOINT": closed_port_url()})
    s.wait_healthy()
    assert SMOL_NAME in s.model_ids(), s.model_ids()
    r = httpx.post(
        f"{s.url}/v1/chat/completions",
        timeout=120,
        json={"model": SMOL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None
