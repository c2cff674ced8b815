"""Images shown to a vision model through llama.cpp's mtmd (`--mmproj`), with the real SDKs.

No small real vision model ships on PyPI, so the projector is built here: a random-weight
LLaVA-style projector over SmolLM2's embedding width (scripts/make-test-mmproj.py). What these
tests show is that the image path works end to end (decoded by mtmd, its tokens counted in
usage and in count_tokens, kept in the prefix cache by the image's content, fetched by URL only
when allowed), not that the model sees well: its weights are noise.
"""

from __future__ import annotations

import base64
import http.server
import random
import subprocess
import sys
import threading
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from conftest import ENGINE, QWEN_CODER, REQUESTED_MODEL, SMOLLM2, Server, _serve, model_path, pensieve_bin
from helpers import IMAGES_LOGGED, T0, png, prompt_total, read_history

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(ENGINE != "llama", reason="mtmd is the llama engine's")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_block(data: bytes) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}}


def describe(image: dict) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Describe this:"}, image, {"type": "text", "text": "In one word."}],
        }
    ]


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mmproj") / "mmproj-smollm2-random.gguf"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make-test-mmproj.py"),
            "--model",
            str(model_path(SMOLLM2)),
            "--out",
            str(out),
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def png_server():
    """A local web server with two PNGs, for images given by URL."""
    files = {"/grey.png": png(64, 48), "/dark.png": png(64, 48, grey=0x20)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(mmproj):
    yield from _serve(SMOLLM2, ["--mmproj", str(mmproj), "--images", "reject"])


@pytest.fixture(scope="module")
def fetching(mmproj):
    yield from _serve(SMOLLM2, ["--mmproj", str(mmproj), "--allow-image-urls"])


def sdk(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=180.0)


def count(client: anthropic.Anthropic, messages: list) -> int:
    return client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages).input_tokens


def test_an_image_goes_through_the_projector_and_counts_in_usage(server):
    client = sdk(server)
    assert "vision projector loaded" in server.log_tail(1_000_000)
    without = count(client, describe({"type": "text", "text": "x"}))
    with_image = describe(image_block(png(64, 48)))
    counted = count(client, with_image)
    # The image's own tokens (16 for this projector) are in the count, not a placeholder's.
    assert counted >= without + 10, (counted, without)
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=with_image, **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert prompt_total(reply.usage) == counted
    # --images reject refuses only images the model can't see: this one it saw.
    assert IMAGES_LOGGED not in server.log_tail(1_000_000)


def test_the_same_image_comes_from_the_cache_and_another_does_not(server):
    client = sdk(server)
    grey, dark = png(40, 40), png(40, 40, grey=0x20)
    # A prefix of its own, so that earlier tests' cache entries do not match it.
    lead = {"type": "text", "text": "Cache test, image follows:"}

    def ask(data: bytes):
        messages = [{"role": "user", "content": [lead, image_block(data), {"type": "text", "text": "Colour?"}]}]
        return client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=messages, **T0).usage

    first = ask(grey)
    again = ask(grey)
    other = ask(dark)
    total = prompt_total(first)
    assert prompt_total(again) == prompt_total(other) == total
    image_tokens = total - count(client, [{"role": "user", "content": [lead, {"type": "text", "text": "Colour?"}]}])
    assert image_tokens >= 10
    # The whole prompt but its last token comes from the cache, the image included.
    assert (again.cache_read_input_tokens or 0) >= total - 2, (first, again)
    # Another image: read only up to where it starts.
    assert (other.cache_read_input_tokens or 0) <= (again.cache_read_input_tokens or 0) - image_tokens, (again, other)


def test_an_image_in_a_tool_result_is_seen_too(server):
    """As Claude Code's Read returns a PNG."""
    client = sdk(server)
    tools = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}}]

    as_text = count(client, read_history([{"type": "text", "text": "x"}]))
    messages = read_history([image_block(png(320, 200))])
    counted = client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages, tools=tools).input_tokens
    assert counted >= as_text + 10
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=messages, tools=tools, **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_chat_completions_image_url_is_seen(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=180.0)

    def ask(content):
        return client.chat.completions.create(
            model=REQUESTED_MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": content}]
        )

    text_only = ask([{"type": "text", "text": "What is it?"}])
    url = "data:image/png;base64," + b64(png(64, 48))
    seen = ask([{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}])
    assert seen.usage.prompt_tokens >= text_only.usage.prompt_tokens + 10
    # The Responses API's input_image is seen too.
    response = client.responses.create(
        model=REQUESTED_MODEL,
        max_output_tokens=4,
        temperature=0,
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "What is it?"}, {"type": "input_image", "image_url": url}],
            }
        ],
    )
    assert response.usage.input_tokens >= text_only.usage.prompt_tokens + 10


def webp(width: int, height: int) -> bytes:
    """A lossless WebP header of that size over no image data."""
    bits = (width - 1) | (height - 1) << 14
    body = b"VP8L" + (5).to_bytes(4, "little") + b"\x2f" + bits.to_bytes(4, "little") + b"\x00"
    return b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WEBP" + body


def test_a_file_that_is_no_decodable_image_is_a_400_naming_its_block(server):
    client = sdk(server)
    # Headers that read (format and size), over data the decoder refuses: a cut PNG, and a
    # WebP (which mtmd's decoder does not read at all).
    for broken in (png(16, 16)[:40] + b"\x00" * 64, webp(16, 16)):
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=describe(image_block(broken)), **T0)
        assert "messages.0.content.1" in str(e.value) and "decoded" in str(e.value), e.value
    # The server is still well.
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=describe(image_block(png(8, 8))), **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens")


def test_image_urls_are_fetched_only_when_allowed(server, fetching, png_server):
    def message(url: str) -> list[dict]:
        image = {"type": "image", "source": {"type": "url", "url": url}}
        return [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]

    # Without --allow-image-urls the server makes no call of its own: with --images reject
    # that is a 400 saying so.
    with pytest.raises(anthropic.BadRequestError) as e:
        sdk(server).messages.create(
            model=REQUESTED_MODEL, max_tokens=4, messages=message(f"{png_server}/grey.png"), **T0
        )
    assert "inline" in str(e.value), e.value
    client = sdk(fetching)
    seen = count(client, message(f"{png_server}/grey.png"))
    inline = count(
        client, [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image_block(png(64, 48))]}]
    )
    # The same image, fetched: the same tokens as when sent inline.
    assert seen == inline, (seen, inline)
    reply = client.messages.create(
        model=REQUESTED_MODEL, max_tokens=4, messages=message(f"{png_server}/dark.png"), **T0
    )
    assert reply.stop_reason in ("end_turn", "max_tokens")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=message(f"{png_server}/missing.png"), **T0)
    assert "404" in str(e.value) and "messages.0.content.1" in str(e.value), e.value


def test_an_image_is_read_from_the_disk_cache_after_a_restart(mmproj, tmp_path):
    server = Server(model_path(SMOLLM2), ["--mmproj", str(mmproj), "--cache-dir", str(tmp_path / "kv")])
    messages = describe(image_block(png(48, 32, grey=0x50)))
    try:
        server.start()
        cold = sdk(server).messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=messages, **T0)
        assert server.terminate() == 0
        server.start()
        warm = sdk(server).messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=messages, **T0)
    finally:
        server.close()
    total = prompt_total(cold.usage)
    # The snapshot on disk holds the image's positions: read back by the image's content.
    assert (warm.usage.cache_read_input_tokens or 0) >= total - 2, (cold.usage, warm.usage)
    assert warm.content[0].text == cold.content[0].text


def bmp(width: int, height: int) -> bytes:
    """A 24-bit BMP of one colour."""
    row = (b"\x10\x80\xf0" * width).ljust((3 * width + 3) // 4 * 4, b"\x00")
    pixels = row * height
    header = b"BM" + (54 + len(pixels)).to_bytes(4, "little") + b"\x00" * 4 + (54).to_bytes(4, "little")
    info = (40).to_bytes(4, "little") + width.to_bytes(4, "little") + height.to_bytes(4, "little")
    info += (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + b"\x00" * 24
    return header + info + pixels


def test_hostile_images_get_a_400_or_are_seen_never_a_crash(server):
    """Mutations of real images (bytes flipped, cut short, sizes rewritten) through mtmd's
    decoder, by count_tokens: each is a 200 or a 400 naming its block, and the server lives."""
    rng = random.Random(23)
    seeds = [png(33, 21), png(8, 300, grey=0x01), bmp(17, 9), bmp(4, 4)]
    client = httpx.Client(base_url=server.url, timeout=60)
    statuses = []
    for i in range(120):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            match rng.randrange(3):
                case 0:
                    data[at] ^= 1 << rng.randrange(8)
                case 1:
                    del data[at:]
                    data += b"\x00"
                case _:
                    data[at : at + 4] = rng.randbytes(4)
        r = client.post(
            "/v1/messages/count_tokens",
            json={"model": REQUESTED_MODEL, "messages": describe(image_block(bytes(data)))},
        )
        statuses.append(r.status_code)
        assert r.status_code in (200, 400), (i, r.status_code, r.text)
        if r.status_code == 400:
            assert "messages.0.content.1" in r.text, r.text
    # Both kinds happened: the test exercised the decoder and its refusals.
    assert 200 in statuses and 400 in statuses, statuses
    assert client.get("/health").status_code == 200


def test_a_projector_that_is_missing_or_for_another_model_is_named_at_start(mmproj, tmp_path):
    def start(model: str, projector: Path) -> subprocess.CompletedProcess:
        args = [str(pensieve_bin()), "serve", "--model", str(model_path(model)), "--mmproj", str(projector)]
        return subprocess.run(args + ["--port", "0"], capture_output=True, text=True, timeout=120)

    missing = start(SMOLLM2, tmp_path / "absent.gguf")
    assert missing.returncode != 0 and "vision projector (--mmproj)" in missing.stderr, missing.stderr
    # SmolLM2's projector (576 wide) for Qwen2.5-Coder-0.5B (896).
    other = start(QWEN_CODER, mmproj)
    assert other.returncode != 0 and "not a projector (mmproj) llama.cpp can use" in other.stderr, other.stderr[-2000:]
