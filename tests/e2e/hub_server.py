"""A loopback Hugging Face Hub: the HTTP file API that `hf-hub` (Rust, 0.4) and
`huggingface_hub` (Python) download through, with faults a test can switch on while it runs.

Python standard library only. Use it from a test:

    hub = FakeHub().start()
    repo = hub.add_repo("org/name", {"config.json": b"{}", "model.Q4_1.gguf": Path("/x.gguf")})
    repo.file("model.Q4_1.gguf").throttle_bps = 15_000_000
    ...  # HF_ENDPOINT=hub.url
    hub.stop()

or by hand: `python hub_server.py --root DIR --port 8090`, where every DIR/org/name/ folder is a
repo holding the files under it (HF_ENDPOINT=http://127.0.0.1:8090).

What it serves (as huggingface.co does; checked against huggingface_hub's hf_hub_download and
snapshot_download, and hf-hub 0.4.3's tokio API):
  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   repo info: id, sha, siblings (with
                                                          size, blobId and lfs when blobs=true)
  GET  /api/models/{repo}/tree/{rev}[/{dir}][?recursive=true]
  HEAD|GET /{repo}/resolve/{rev}/{path}   X-Repo-Commit and ETag (the git blob sha1) with the
        bytes (200, or 206 for a Range); an LFS file instead answers 302 with an absolute
        Location on the CDN (the same server on a second port: another origin, as on the real
        Hub), X-Linked-Etag ("sha256") and X-Linked-Size
  HEAD|GET {cdn}/cdn/{sha256}            the bytes of an LFS file (Range: 206 + Content-Range)
Errors carry X-Error-Code as the Hub's do: RepoNotFound (404, or 401 for a private repo asked
without its token), RevisionNotFound (404), EntryNotFound (404), GatedRepo (401 without a token,
403 with a wrong one).

Faults, per file (HubFile), settable at any time: `corrupt` (one byte flipped in what is served;
the metadata still tells the true sha256), `throttle_bps`, `drop_after` / `set_drop_after(n,
times)` (the connection is cut after that many more body bytes of this file, once or `times`
times; `drops` is the list of cuts still to come). Every request is recorded in `hub.log`
(RequestRecord: method, path, range, authorization, sent, status), live: `sent` grows while the
body goes out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024 * 1024
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npz")
BLOCK = 256 * 1024

# sha256 / git sha1 of files on disk, by (path, size, mtime): the 100 MB test model is hashed
# once per test run, not once per hub.
_DIGESTS: dict[tuple[str, int, int], tuple[str, str]] = {}
_DIGESTS_LOCK = threading.Lock()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _file_digests(path: Path) -> tuple[str, str]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % st.st_size)
    with open(path, "rb") as f:
        while block := f.read(4 * 1024 * 1024):
            sha256.update(block)
            sha1.update(block)
    digests = (sha256.hexdigest(), sha1.hexdigest())
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digests
    return digests


class HubFile:
    """One file of a repo: bytes in memory or a file on disk (streamed, never loaded)."""

    def __init__(self, path: str, source: bytes | str | os.PathLike, lfs: bool | None = None):
        self.path = path
        if isinstance(source, (bytes, bytearray)):
            self.data: bytes | None = bytes(source)
            self.source: Path | None = None
            self.size = len(self.data)
            self.sha256 = hashlib.sha256(self.data).hexdigest()
            self.git_sha1 = git_blob_sha1(self.data)
        else:
            self.data = None
            self.source = Path(source)
            self.size = self.source.stat().st_size
            self.sha256, self.git_sha1 = _file_digests(self.source)
        if lfs is None:
            lfs = self.size > LFS_THRESHOLD or path.lower().endswith(LFS_SUFFIXES)
        self.lfs = lfs
        if lfs:
            # In git the file is its pointer; the blob id is the pointer's.
            pointer = lfs_pointer(self.sha256, self.size)
            self.pointer_size = len(pointer)
            self.blob_id = git_blob_sha1(pointer)
        else:
            self.pointer_size = None
            self.blob_id = self.git_sha1
        # Faults.
        self.corrupt = False
        self.corrupt_offset: int | None = None  # default: the middle byte
        self.throttle_bps: float | None = None
        # Cut the connection after this many more body bytes, then after the next number...
        self.drops: list[int] = []
        self._drop_counted = 0
        # Body bytes of this file served so far (all requests).
        self.sent = 0

    @property
    def drop_after(self) -> int | None:
        """The body bytes (of this file, over all requests) after which the connection is cut."""
        return self.drops[0] if self.drops else None

    @drop_after.setter
    def drop_after(self, n: int | None) -> None:
        self.set_drop_after(n)

    def set_drop_after(self, n: int | None, times: int = 1) -> None:
        """Cut the connection after `n` more body bytes; `times` > 1: again after each further
        `n` (a client that retries keeps failing)."""
        self.drops = [] if n is None else [n] * times
        self._drop_counted = 0

    @property
    def etag(self) -> str:
        """What a client keys its cache blob by: the sha256 of an LFS file, else the git sha1."""
        return self.sha256 if self.lfs else self.git_sha1

    def _flip_at(self) -> int:
        return self.size // 2 if self.corrupt_offset is None else self.corrupt_offset

    def iter_bytes(self, start: int, stop: int, block: int = BLOCK) -> Iterator[bytes]:
        """Bytes [start, stop) as served: with the corrupt byte flipped if it falls inside."""
        flip = self._flip_at() if self.corrupt else None
        pos = start
        f = open(self.source, "rb") if self.source is not None else None
        try:
            if f is not None:
                f.seek(start)
            while pos < stop:
                n = min(block, stop - pos)
                chunk = f.read(n) if f is not None else self.data[pos : pos + n]
                if not chunk:
                    raise OSError(f"{self.path}: source ended at {pos} of {self.size}")
                if flip is not None and pos <= flip < pos + len(chunk):
                    b = bytearray(chunk)
                    b[flip - pos] ^= 0xFF
                    chunk = bytes(b)
                yield chunk
                pos += len(chunk)
        finally:
            if f is not None:
                f.close()

    def read_all(self) -> bytes:
        return b"".join(self.iter_bytes(0, self.size))

    def sibling(self, blobs: bool) -> dict:
        entry: dict = {"rfilename": self.path}
        if blobs:
            entry["size"] = self.size
            entry["blobId"] = self.blob_id
            if self.lfs:
                entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def tree_entry(self) -> dict:
        entry: dict = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


@dataclass
class Revision:
    commit: str
    files: dict[str, HubFile]


class HubRepo:
    def __init__(self, hub: FakeHub, repo_id: str, gated: bool, private: bool, token: str):
        self.hub = hub
        self.repo_id = repo_id
        self.gated = gated
        self.private = private
        self.token = token
        # Branch/tag name -> revision; a commit sha resolves too.
        self.revisions: dict[str, Revision] = {}

    @property
    def commit(self) -> str:
        return self.revisions["main"].commit

    def add_revision(self, name: str, files: dict, commit: str | None = None, lfs: dict | None = None) -> Revision:
        """A branch (or tag) `name` with `files` (path -> bytes, path on disk, or HubFile)."""
        commit = commit or hashlib.sha1(f"{self.repo_id}@{name}@{len(self.revisions)}".encode()).hexdigest()
        built: dict[str, HubFile] = {}
        for path, source in files.items():
            if isinstance(source, HubFile):
                built[path] = source
            else:
                built[path] = HubFile(path, source, (lfs or {}).get(path))
        rev = Revision(commit, built)
        self.revisions[name] = rev
        with self.hub.lock:
            for f in built.values():
                if f.lfs:
                    self.hub.cdn.setdefault(f.sha256, f)
        return rev

    def resolve(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        for r in self.revisions.values():
            if r.commit == rev:
                return r
        return None

    def file(self, path: str, rev: str = "main") -> HubFile:
        return self.revisions[rev].files[path]

    def authorized(self, authorization: str | None) -> bool:
        return authorization == f"Bearer {self.token}"


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    authorization: str | None
    sent: int = 0
    status: int | None = None
    time: float = field(default_factory=time.monotonic)

    def astuple(self) -> tuple:
        return (self.method, self.path, self.range, self.authorization, self.sent)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None (no usable Range: the whole file), or "unsatisfiable".
    An end past the file is clamped, as servers do (hf-hub asks for `bytes=a-LEN`)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    a, b = m.groups()
    if a == "":
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    hub: FakeHub  # set on the subclass

    def log_message(self, format, *args):  # noqa: A002 - quiet unless asked
        if self.hub.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.record = RequestRecord(method, url.path, self.headers.get("Range"), self.headers.get("Authorization"))
        with self.hub.lock:
            self.hub.log.append(self.record)
        self.query = parse_qs(url.query)
        path = url.path
        try:
            if path.startswith("/api/models/"):
                if method != "GET":
                    return self._error(405, None, "method not allowed")
                return self._api(path[len("/api/models/") :])
            if path.startswith("/cdn/"):
                return self._cdn(method, path[len("/cdn/") :])
            if "/resolve/" in path:
                return self._resolve(method, path.lstrip("/"))
            return self._error(404, None, "not found")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    # -- responses ---------------------------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _find_repo(self, parts: list[str]) -> tuple[HubRepo | None, list[str], str]:
        """The repo named by the first two (or one) path parts, the rest, and the id asked for."""
        for n in (2, 1):
            if len(parts) >= n:
                repo_id = "/".join(parts[:n])
                repo = self.hub.repos.get(repo_id)
                if repo is not None:
                    return repo, parts[n:], repo_id
        asked = "/".join(parts[:2])
        return None, parts[2:], asked

    def _repo_denied(self, repo: HubRepo | None, repo_id: str, files: bool) -> bool:
        """Answer for an unknown, private or gated repo; True when answered."""
        auth = self.headers.get("Authorization")
        if repo is None or (repo.private and not repo.authorized(auth)):
            status = self.hub.missing_repo_status if repo is None else 401
            self._error(status, "RepoNotFound", f"Repository not found: {repo_id}")
            return True
        if repo.gated and files and not repo.authorized(auth):
            if auth:
                self._error(
                    403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list."
                )
            else:
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                )
            return True
        return False

    def _api(self, rest: str) -> None:
        parts = [unquote(p) for p in rest.split("/") if p != ""]
        repo, tail, repo_id = self._find_repo(parts)
        if self._repo_denied(repo, repo_id, files=False):
            return
        assert repo is not None
        if not tail:
            return self._info(repo, "main")
        if tail[0] == "revision" and len(tail) >= 2:
            return self._info(repo, "/".join(tail[1:]))
        if tail[0] == "tree" and len(tail) >= 2:
            return self._tree(repo, tail[1], "/".join(tail[2:]))
        return self._error(404, None, "not found")

    def _info(self, repo: HubRepo, rev_name: str) -> None:
        rev = repo.resolve(rev_name)
        if rev is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
        blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        info = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": rev.commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": [f.sibling(blobs) for _, f in sorted(rev.files.items())],
        }
        if blobs:
            info["usedStorage"] = sum(f.size for f in rev.files.values())
        self._json(200, info, {"X-Repo-Commit": rev.commit})

    def _tree(self, repo: HubRepo, rev_name: str, under: str) -> None:
        rev = repo.resolve(unquote(rev_name))
        if rev is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        entries: list[dict] = []
        dirs: set[str] = set()
        for path, f in sorted(rev.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            segments = rel.split("/")
            for i in range(1, len(segments)):
                d = prefix + "/".join(segments[:i])
                if recursive or i == 1:
                    dirs.add(d)
            if recursive or len(segments) == 1:
                entries.append(f.tree_entry())
        if prefix and not entries and not dirs:
            return self._error(404, "EntryNotFound", f"{under} does not exist on {rev_name}")
        for d in sorted(dirs):
            entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        self._json(200, entries)

    def _resolve(self, method: str, rest: str) -> None:
        before, _, after = rest.partition("/resolve/")
        parts = [unquote(p) for p in before.split("/") if p]
        repo, tail, repo_id = self._find_repo(parts)
        if tail:
            repo, repo_id = None, "/".join(parts)
        if self._repo_denied(repo, repo_id, files=True):
            return
        assert repo is not None
        rev_name, _, file_path = after.partition("/")
        rev_name, file_path = unquote(rev_name), unquote(file_path)
        rev = repo.resolve(rev_name)
        if rev is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
        f = rev.files.get(file_path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist on {rev_name}")
        if f.lfs:
            location = f"{self.hub.cdn_url}/cdn/{f.sha256}"
            return self._send(
                302,
                {
                    "Location": location,
                    "X-Repo-Commit": rev.commit,
                    "ETag": f'"{f.blob_id}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Content-Type": "text/plain; charset=utf-8",
                },
                f"Found. Redirecting to {location}".encode(),
            )
        self._serve_bytes(method, f, {"X-Repo-Commit": rev.commit, "ETag": f'"{f.git_sha1}"'})

    def _cdn(self, method: str, rest: str) -> None:
        sha = rest.split("/")[0]
        with self.hub.lock:
            f = self.hub.cdn.get(sha)
        if f is None:
            return self._send(404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>")
        self._serve_bytes(method, f, {"ETag": f'"{f.sha256}"', "Cache-Control": "public, max-age=604800"})

    def _serve_bytes(self, method: str, f: HubFile, headers: dict[str, str]) -> None:
        r = parse_range(self.headers.get("Range"), f.size)
        if r == "unsatisfiable":
            return self._send(416, {**headers, "Content-Range": f"bytes */{f.size}"})
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if r is None:
            start, end, status = 0, f.size - 1, 200
        else:
            start, end = r
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1 if f.size else 0
        headers["Content-Length"] = str(length)
        self._send(status, headers)
        if method == "HEAD" or length == 0:
            return
        self._stream(f, start, end + 1)

    def _stream(self, f: HubFile, start: int, stop: int) -> None:
        t0 = time.monotonic()
        sent_here = 0
        block = 64 * 1024 if f.throttle_bps else BLOCK
        for chunk in f.iter_bytes(start, stop, block):
            if self.hub.stopping:
                self._cut()
                return
            cut = False
            with self.hub.lock:
                if f.drops:
                    left = f.drops[0] - f._drop_counted
                    if left <= len(chunk):
                        chunk, cut = chunk[: max(left, 0)], True
                        f.drops.pop(0)
                        f._drop_counted = 0
                    else:
                        f._drop_counted += len(chunk)
            if chunk:
                self.wfile.write(chunk)
                with self.hub.lock:
                    f.sent += len(chunk)
                    self.record.sent += len(chunk)
                    self.hub.bytes_sent += len(chunk)
                sent_here += len(chunk)
            if cut:
                self._cut()
                return
            bps = f.throttle_bps
            if bps:
                ahead = sent_here / bps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    def _cut(self) -> None:
        """Close the connection mid-body, as a network failure would."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (Ctrl-C in the middle of a download) is no error of the hub.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeHub:
    """The server: repos by id, a request log, faults. `start()` serves in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.host = host
        self.port = port
        self.verbose = verbose
        self.lock = threading.RLock()
        self.repos: dict[str, HubRepo] = {}
        self.cdn: dict[str, HubFile] = {}
        self.log: list[RequestRecord] = []
        self.bytes_sent = 0
        self.stopping = False
        # The real Hub answers 401 RepoNotFound to a request without a token; 404 with one.
        self.missing_repo_status = 404
        self.cdn_port = 0
        self._servers: list[_Server] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self.host}:{self.cdn_port}"

    def start(self) -> FakeHub:
        """Serve the Hub on `port` and the CDN on a port of its own: a redirect to another
        origin is what both clients expect for an LFS file (one to the same origin they follow
        themselves, and then the CDN's answer lacks X-Repo-Commit)."""
        handler = type("Handler", (_Handler,), {"hub": self})
        for attr in ("port", "cdn_port"):
            server = _Server((self.host, getattr(self, attr)), handler)
            setattr(self, attr, server.server_address[1])
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping = True
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content ---------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict,
        *,
        commit: str | None = None,
        gated: bool = False,
        private: bool = False,
        token: str = "hf_fakehub_token",
        lfs: dict | None = None,
    ) -> HubRepo:
        """A model repo with `files` on its main branch: path -> bytes, a path on disk, or a
        HubFile. `gated`: the file downloads need `Authorization: Bearer {token}` (the info is
        public); `private`: everything does, and without it the repo does not exist."""
        repo = HubRepo(self, repo_id, gated, private, token)
        repo.add_revision("main", files, commit=commit or hashlib.sha1(repo_id.encode()).hexdigest(), lfs=lfs)
        with self.lock:
            self.repos[repo_id] = repo
        return repo

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos[repo_id]

    def file(self, repo_id: str, path: str, rev: str = "main") -> HubFile:
        return self.repos[repo_id].file(path, rev)

    # -- the log ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the log: requests(since=mark) are those after it."""
        with self.lock:
            return len(self.log)

    def requests(self, since: int = 0) -> list[RequestRecord]:
        with self.lock:
            return list(self.log[since:])

    def cdn_gets(self, since: int = 0) -> list[RequestRecord]:
        return [r for r in self.requests(since) if r.method == "GET" and r.path.startswith("/cdn/")]

    def body_bytes(self, since: int = 0) -> int:
        return sum(r.sent for r in self.requests(since))


def load_root(hub: FakeHub, root: Path) -> None:
    """Every ROOT/org/name/ folder becomes a repo with the files under it (read from disk)."""
    for org in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in sorted(p for p in org.iterdir() if p.is_dir()):
            files = {
                str(p.relative_to(name)): p
                for p in sorted(name.rglob("*"))
                if p.is_file() and ".git" not in p.relative_to(name).parts
            }
            hub.add_repo(f"{org.name}/{name.name}", files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of ORG/NAME/ repo folders")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--cdn-port", type=int, default=0, help="where LFS files are served [default: any free port]")
    parser.add_argument("--gated", action="append", default=[], help="REPO: downloads need --token")
    parser.add_argument("--token", default="hf_fakehub_token")
    parser.add_argument("--throttle-bps", type=float, default=None, help="for every file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args()
    hub = FakeHub(args.host, args.port, verbose=args.verbose)
    hub.cdn_port = args.cdn_port
    load_root(hub, args.root)
    for repo_id in args.gated:
        hub.repos[repo_id].gated = True
        hub.repos[repo_id].token = args.token
    if args.throttle_bps:
        for repo in hub.repos.values():
            for rev in repo.revisions.values():
                for f in rev.files.values():
                    f.throttle_bps = args.throttle_bps
    hub.start()
    print(f"fake hub on {hub.url} (HF_ENDPOINT={hub.url}), LFS files on {hub.cdn_url}, serving:", flush=True)
    for repo in hub.repos.values():
        print(f"  {repo.repo_id}@{repo.commit}: {', '.join(sorted(repo.revisions['main'].files))}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
