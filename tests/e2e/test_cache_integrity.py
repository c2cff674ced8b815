"""The prefix cache on disk under faults: kill -9 in the middle of writes, damaged
files, a full disk, two servers on one --cache-dir. Whatever happened, the server
answers every prompt as a cold server does (greedy, token for token), never serves a
bad file, and removes what it cannot trust.

The real binary, SmolLM2-135M-Instruct, over HTTP. Snapshots of its ~400-token prompts
are ~9 MB each, so with --cache-ram 1MiB every evicted entry goes straight to disk.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import ENGINE, REQUESTED_MODEL, SMOLLM2, Server, model_path, summary_line
from helpers import scrape

pytestmark = pytest.mark.skipif(ENGINE != "llama", reason="the disk tier's faults are engine-independent")

WORDS = (
    "harbor lantern copper meadow signal orchard granite whisper canyon ledger falcon thistle "
    "ember quarry saddle beacon tundra velvet anchor cobalt marble prairie glacier hollow"
).split()


def _prompt(seed: int) -> str:
    rng = random.Random(seed)
    words = " ".join(rng.choice(WORDS) for _ in range(300))
    return f"Notes {seed}: {words}. Which word came first?"


PROMPTS = [_prompt(seed) for seed in range(6)]
SPILL = ["--parallel", "2", "--ctx", "2048", "--cache-ram", "1MiB"]


def _ask(server: Server, prompt: str, timeout: float = 120.0) -> str:
    r = httpx.post(
        f"{server.url}/v1/messages",
        json={
            "model": REQUESTED_MODEL,
            "max_tokens": 16,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        },
        timeout=timeout,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n--- server log ---\n{server.log_tail()}"
    return r.json()["content"][0]["text"]


def _answers(server: Server) -> list[str]:
    return [_ask(server, p) for p in PROMPTS]


def _files(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def _disk_tier(server: Server) -> tuple[int, int]:
    m = scrape(server.url)
    return int(m.get("pensieve_cache_entries", tier="disk")), int(m.get("pensieve_cache_bytes", tier="disk"))


@pytest.fixture(scope="module")
def cold() -> list[str]:
    """The answers of a server that never had a disk cache."""
    server = Server(model_path(SMOLLM2), ["--parallel", "2", "--ctx", "2048"])
    try:
        server.start()
        return _answers(server)
    finally:
        server.close()


def _drive(server: Server, tag: str, stop: threading.Event) -> None:
    """Fresh prompts until stopped or the server dies: slots keep turning over, so
    entries keep spilling to disk."""
    i = 0
    while not stop.is_set():
        try:
            _ask(server, f"[{tag}.{i}] " + PROMPTS[i % len(PROMPTS)], timeout=30)
        except (httpx.HTTPError, AssertionError):
            return
        i += 1


def test_kill_9_in_the_middle_of_writes_then_a_restart_answers_as_a_cold_server(tmp_path: Path, cold):
    cache_dir = tmp_path / "kv"
    server = Server(model_path(SMOLLM2), [*SPILL, "--cache-dir", str(cache_dir)])
    torn = 0
    try:
        for round_ in range(3):
            server.start()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_drive, args=(server, f"{round_}.{k}", stop), daemon=True) for k in range(2)
            ]
            for t in threads:
                t.start()
            # Once this round has written a snapshot, kill as soon as the next write is
            # under way (a temporary file exists).
            written = len(_files(cache_dir, ".kv"))
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and len(_files(cache_dir, ".kv")) <= written:
                time.sleep(0.01)
            while time.monotonic() < deadline and not _files(cache_dir, ".tmp"):
                time.sleep(0.001)
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            stop.set()
            for t in threads:
                t.join(timeout=60)
            torn += len(_files(cache_dir, ".tmp"))

        server.start()
        assert not _files(cache_dir, ".tmp"), "a torn temporary file survived the restart"
        entries, _ = _disk_tier(server)
        got = _answers(server)
        assert got == cold, f"after kill -9 and a restart:\n{got}\ncold:\n{cold}\n--- log ---\n{server.log_tail()}"
        assert entries >= 1, "nothing from the killed servers' disk tier was indexed"
        summary_line(
            f"disk cache: 3 kill -9 rounds during writes, {torn} torn temporary files left and removed, "
            f"{entries} snapshots indexed, answers equal a cold server's"
        )
    finally:
        server.close()


def _flip(path: Path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x10
    path.write_bytes(bytes(b))


def _as_another_model(path: Path) -> None:
    """Rewrite the fingerprint in the header and fix the header's checksum: a valid file
    made for another model."""
    b = bytearray(path.read_bytes())
    fp_len = int.from_bytes(b[8:12], "little")
    b[12] ^= 0x01
    count = int.from_bytes(b[12 + fp_len + 4 : 12 + fp_len + 8], "little")
    header_end = 12 + fp_len + 8 + 4 * count + 8
    b[header_end : header_end + 4] = zlib.crc32(bytes(b[:header_end])).to_bytes(4, "little")
    path.write_bytes(bytes(b))


def test_damaged_files_are_removed_and_never_served(tmp_path: Path, cold):
    cache_dir = tmp_path / "kv"
    server = Server(model_path(SMOLLM2), ["--parallel", "2", "--ctx", "2048", "--cache-dir", str(cache_dir)])
    try:
        server.start()
        assert _answers(server) == cold
        assert server.terminate() == 0
        files = _files(cache_dir, ".kv")
        assert len(files) >= 5, f"test premise: a snapshot per prompt, got {files}"
        damaged = {
            "a bit flipped in the snapshot": files[0],
            "truncated": files[1],
            "a bit flipped in the header": files[2],
            "made for another model": files[3],
            "empty": files[4],
        }
        _flip(files[0], files[0].stat().st_size // 2)
        os.truncate(files[1], files[1].stat().st_size // 2)
        fp_len = int.from_bytes(files[2].read_bytes()[8:12], "little")
        _flip(files[2], 12 + fp_len + 8 + 5)  # in a token id
        _as_another_model(files[3])
        files[4].write_bytes(b"")
        torn = files[0].with_suffix(".4242.0.tmp")
        torn.write_bytes(b"half a write")

        server.start()
        # Header damage is caught when the directory is indexed; the snapshot's when it is read.
        for what, path in damaged.items():
            if what != "a bit flipped in the snapshot":
                assert not path.exists(), f"{what}: still there after the start"
        assert not torn.exists()
        got = _answers(server)
        assert got == cold, f"with damaged files:\n{got}\ncold:\n{cold}\n--- log ---\n{server.log_tail()}"
        log = server.log_tail(200_000)
        assert log.count("removing a bad cache file") >= 5, log[-4000:]
        assert "the snapshot's checksum does not match" in log
        assert "the header's checksum does not match" in log
        assert "made for another model" in log
    finally:
        server.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB file system: no snapshot fits on it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_serving_without_the_disk_tier(small_disk: Path, cold):
    server = Server(model_path(SMOLLM2), [*SPILL, "--cache-dir", str(small_disk)])
    try:
        server.start()
        got = _answers(server)
        assert got == cold
        log = server.log_tail(200_000)
        assert "the disk is full" in log, log[-4000:]
        assert _disk_tier(server) == (0, 0), "entries whose write failed are still counted on disk"
        assert not _files(small_disk, ".tmp"), "a failed write left its temporary file"
        # Shutdown tries to write the rest, and must not fail or hang on the full disk.
        assert server.terminate() == 0
        assert not _files(small_disk, ".kv")
    finally:
        server.close()


def test_two_servers_on_one_cache_dir_the_second_runs_without_it(tmp_path: Path, cold):
    cache_dir = tmp_path / "kv"
    args = ["--parallel", "2", "--ctx", "2048", "--cache-dir", str(cache_dir)]
    first = Server(model_path(SMOLLM2), args)
    second = Server(model_path(SMOLLM2), args)
    try:
        first.start()
        second.start()
        log = second.log_tail()
        assert "serving without the prefix cache on disk" in log and f"pid {first.proc.pid}" in log, log
        assert [_ask(second, p) for p in PROMPTS[:2]] == cold[:2]
        assert [_ask(first, p) for p in PROMPTS[:2]] == cold[:2]
        assert second.terminate() == 0
        assert not _files(cache_dir, ".kv"), "the server without the lock wrote to the directory"
        assert first.terminate() == 0
        assert _files(cache_dir, ".kv"), "the server holding the lock wrote nothing on shutdown"
        # The lock went with the first server: the second now takes the directory.
        second.start()
        assert _disk_tier(second)[0] >= 1
        assert _answers(second) == cold
    finally:
        second.close()
        first.close()
