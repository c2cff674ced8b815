"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator

import httpx

REQUEST_ID_RE = re.compile(r"^req_[A-Za-z0-9]+$")
TOO_LONG_RE = re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum")

BILLING_LINE = "x-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;"

# A tool and a question for it, in the Anthropic API's shape.
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]
# This SDK version no longer takes `temperature` as an argument; the API still does.
T0 = {"extra_body": {"temperature": 0}}

# What a model without vision reads in an image's place.
IMAGE_PLACEHOLDER = "[image: PNG {w}×{h}, not shown: this model has no vision]"
# What the server logs once per request that had images shown as placeholders.
IMAGES_LOGGED = "images shown to the model as placeholders"


def png(width: int, height: int, grey: int = 0x80) -> bytes:
    """A real PNG of one grey colour, every chunk with its CRC."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([grey]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def read_history(result_content) -> list[dict]:
    """A conversation where the assistant's Read call of shot.png came back with `result_content`
    (as Claude Code's Read returns an image: a block inside the tool_result)."""
    return [
        {"role": "user", "content": "Look at shot.png"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "shot.png"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result_content}]},
    ]


def after_the_call(first, result: str) -> list[dict]:
    """QUESTION, the assistant's reply `first` (an SDK message with a tool_use block), and
    `result` as that call's tool result: the conversation's next request."""
    call = next(b for b in first.content if b.type == "tool_use")
    return QUESTION + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]},
    ]


def iter_sse(response: httpx.Response) -> Iterator[tuple[str | None, dict]]:
    """Parse a text/event-stream body into (event name, parsed data) pairs."""
    event: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


def assert_error_shape(response: httpx.Response, status: int, error_type: str) -> dict:
    """The Anthropic error envelope: {"type":"error","error":{"type","message"},"request_id"}."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert body.get("type") == "error", body
    assert isinstance(body.get("error"), dict), body
    assert body["error"].get("type") == error_type, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    assert isinstance(body.get("request_id"), str) and REQUEST_ID_RE.match(body["request_id"]), body
    header_id = response.headers.get("request-id")
    assert header_id == body["request_id"], (header_id, body["request_id"])
    return body


def text_of(message) -> str:
    """All text blocks of an SDK Message, joined."""
    return "".join(block.text for block in message.content if block.type == "text")


def prompt_total(usage) -> int:
    """Input tokens of a response, counting prefix-cache hits (input + cache_creation + cache_read)."""
    return (
        usage.input_tokens
        + (getattr(usage, "cache_creation_input_tokens", None) or 0)
        + (getattr(usage, "cache_read_input_tokens", None) or 0)
    )


METRIC_LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """One scrape of GET /metrics (OpenMetrics text), by sample name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = METRIC_LINE_RE.match(line)
            if not m:
                continue
            labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
            self.samples[(m.group(1), labels)] = float(m.group(3))

    def get(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels or ''} in /metrics:\n{self.text}")
        return self.samples[key]


def scrape(base_url: str) -> Metrics:
    r = httpx.get(f"{base_url}/metrics", timeout=30.0)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return Metrics(r.text)
