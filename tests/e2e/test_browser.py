"""What a web page can make the server do, in a real browser (headless Chromium).

The pages come from a small HTTP server on loopback under made-up names (`*.test`, which
Chromium's --host-resolver-rules maps to 127.0.0.1): `evil.test` stands for any site the user
happens to open, `good.test` for the one origin the server allows (--cors-origin). Chromium
sends its own headers (Origin, Sec-Fetch-*, preflights), so the server sees exactly what a
browser sends.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import subprocess
import threading

import httpx
import pytest
from conftest import SMOLLM2, Server, free_port, model_path
from helpers import scrape

# The page tries what a page can: a "simple" request (text/plain, sent without asking), a
# form post, and JSON requests to both APIs (which need a preflight). It writes what it saw.
ATTACK_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const api = `http://127.0.0.1:${new URLSearchParams(location.search).get('port')}`;
const msg = JSON.stringify({model: 'm', max_tokens: 4, messages: [{role: 'user', content: 'Say hi'}]});
const chat = JSON.stringify({model: 'm', max_tokens: 4, messages: [{role: 'user', content: 'Say hi'}]});
async function attempt(name, f) {
  try {
    const r = await f();
    return [name, r.type === 'opaque' ? 'opaque' : r.status, r.type === 'opaque' ? '' : await r.text()];
  } catch (e) { return [name, 'error', String(e)]; }
}
(async () => {
  const out = [];
  out.push(await attempt('text_plain', () =>
    fetch(api + '/v1/messages', {method: 'POST', mode: 'no-cors', body: msg})));
  out.push(await attempt('form', () =>
    fetch(api + '/v1/chat/completions', {method: 'POST', mode: 'no-cors', body: new URLSearchParams({q: chat})})));
  out.push(await attempt('anthropic_json', () => fetch(api + '/v1/messages', {method: 'POST', body: msg,
    headers: {'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': 'local',
              'anthropic-dangerous-direct-browser-access': 'true'}})));
  out.push(await attempt('openai_json', () => fetch(api + '/v1/chat/completions', {method: 'POST', body: chat,
    headers: {'content-type': 'application/json', 'authorization': 'Bearer local'}})));
  out.push(await attempt('models', () => fetch(api + '/v1/models')));
  document.getElementById('out').textContent = JSON.stringify(out);
})();
</script></body></html>
"""


def chromium() -> str:
    for name in (os.environ.get("PENSIEVE_CHROMIUM"), "chromium-headless-shell", "chromium", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless Chromium: scripts/setup-test-env.sh installs chromium-headless-shell")


def dump_dom(url: str) -> str:
    """The page's DOM once its scripts are done (virtual time waits for their fetches)."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP *.test 127.0.0.1",
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ATTACK_PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pages():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def guarded(pages):
    server = Server(model_path(SMOLLM2), ["--cors-origin", f"http://good.test:{pages}", "--ctx", "2048"])
    try:
        server.start()
        yield server
    finally:
        server.close()


def page_results(pages: int, origin_host: str, port: int) -> dict[str, tuple]:
    dom = dump_dom(f"http://{origin_host}:{pages}/attack.html?port={port}")
    m = re.search(r'<pre id="out">(.*?)</pre>', dom, re.DOTALL)
    assert m and m.group(1) != "pending", dom[-2000:]
    return {name: (status, body) for name, status, body in json.loads(html.unescape(m.group(1)))}


def test_a_foreign_page_cannot_drive_the_model(pages, guarded):
    before = scrape(guarded.url)
    seen = page_results(pages, "evil.test", guarded.port)
    after = scrape(guarded.url)
    # JSON requests die at the preflight, so the page reads nothing; the simple ones go out
    # (the browser does not ask) and come back opaque.
    for name in ("anthropic_json", "openai_json", "models"):
        assert seen[name][0] == "error", seen
    assert seen["text_plain"][0] == "opaque" and seen["form"][0] == "opaque", seen
    # ...and the server ran none of them: no prompt reached the engine.
    assert after.get("pensieve_prompt_tokens_total") == before.get("pensieve_prompt_tokens_total"), seen
    refused = sum(
        after.samples.get(k, 0) - before.samples.get(k, 0)
        for k in after.samples
        if k[0] == "pensieve_requests_total" and ("status", "403") in k[1]
    )
    assert refused >= 5, (refused, seen)


def test_the_allowed_origin_calls_both_apis(pages, guarded):
    seen = page_results(pages, "good.test", guarded.port)
    status, body = seen["anthropic_json"]
    assert status == 200, seen
    assert json.loads(body)["content"][0]["type"] == "text"
    status, body = seen["openai_json"]
    assert status == 200, seen
    assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"
    assert seen["models"][0] == 200, seen
    # Even an allowed page may not post text/plain or a form: only JSON drives the model.
    assert seen["text_plain"][0] == "opaque" and seen["form"][0] == "opaque", seen


def test_dns_rebinding_gets_no_answer(guarded):
    # After rebinding, the attacker's name points at 127.0.0.1 and the page's requests are
    # same-origin: the browser lets the page read the answer. The answer must be a refusal.
    dom = dump_dom(f"http://rebind.test:{guarded.port}/v1/models")
    assert "permission_error" in dom and "--allowed-host" in dom, dom[-1000:]
    assert "claude" not in dom and "SmolLM2" not in dom, dom[-1000:]
    dom = dump_dom(f"http://localhost:{guarded.port}/v1/models")
    assert '"object":"list"' in dom.replace(" ", ""), dom[-1000:]


def test_allowed_host_answers_a_proxy_name(pages):
    server = Server(model_path(SMOLLM2), ["--allowed-host", "box.test", "--ctx", "1024"])
    try:
        server.start()
        dom = dump_dom(f"http://box.test:{server.port}/v1/models")
        assert '"object":"list"' in dom.replace(" ", ""), dom[-1000:]
        dom = dump_dom(f"http://other.test:{server.port}/health")
        assert "permission_error" in dom, dom[-1000:]
    finally:
        server.close()


def test_plain_clients_are_unaffected(guarded):
    # curl and the SDKs send JSON without an Origin; their Host is the address they dialled.
    r = httpx.post(
        f"{guarded.url}/v1/messages",
        timeout=120,
        json={"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(
        f"{guarded.url}/v1/messages", timeout=30, content=b'{"model": "m"}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"], r.text
