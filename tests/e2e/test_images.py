"""Images sent to a text-only model, through the real SDKs: each image becomes a short
placeholder the model reads where the image was (so a Claude Code session that once held a
screenshot goes on), a bad image is a 400 naming its block, and `--images reject` refuses
every image. What the model read is checked exactly through `count_tokens`: a request with an
image counts as many tokens as the same request with the placeholder's text written in."""

from __future__ import annotations

import base64

import anthropic
import openai
import pytest
from conftest import REQUESTED_MODEL, SMOLLM2, _serve
from helpers import IMAGE_PLACEHOLDER as PLACEHOLDER
from helpers import IMAGES_LOGGED as LOGGED
from helpers import T0, png, prompt_total, read_history


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_block(width: int = 64, height: int = 48) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(png(width, height))}}


@pytest.fixture(scope="module")
def server():
    yield from _serve(SMOLLM2)


@pytest.fixture(scope="module")
def rejecting():
    yield from _serve(SMOLLM2, ["--images", "reject"])


def sdk(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=180.0)


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=180.0)


def count(client: anthropic.Anthropic, messages: list) -> int:
    return client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages).input_tokens


def test_an_image_in_a_message_is_read_as_its_placeholder(server):
    client = sdk(server)
    with_image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_block(64, 48)]}]
    as_text = [{"role": "user", "content": "What is this?\n\n" + PLACEHOLDER.format(w=64, h=48)}]
    expected = count(client, as_text)
    assert count(client, with_image) == expected
    logged = server.log_tail(1_000_000).count(LOGGED)
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=with_image, **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert prompt_total(reply.usage) == expected
    # Said once for the request.
    assert server.log_tail(1_000_000).count(LOGGED) == logged + 1, server.log_tail()


def test_an_image_in_a_tool_result_keeps_the_conversation_going(server):
    """As Claude Code's Read returns a PNG: an image block inside a tool_result."""
    client = sdk(server)

    tools = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}}]
    with_image = read_history([image_block(1280, 720)])
    as_text = read_history([{"type": "text", "text": PLACEHOLDER.format(w=1280, h=720)}])
    counted = [
        client.messages.count_tokens(model=REQUESTED_MODEL, messages=m, tools=tools).input_tokens
        for m in (with_image, as_text)
    ]
    assert counted[0] == counted[1]
    with client.messages.stream(model=REQUESTED_MODEL, max_tokens=8, messages=with_image, tools=tools, **T0) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_a_bad_image_is_a_400_naming_its_block(server):
    client = sdk(server)
    for source, says in [
        ({"type": "base64", "media_type": "image/png", "data": b64(b"not a picture")}, "not an image"),
        ({"type": "base64", "media_type": "image/png", "data": "%%%"}, "not valid base64"),
        ({"type": "base64", "media_type": "image/png", "data": b64(png(9000, 1))}, "at most 8000"),
    ]:
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(
                model=REQUESTED_MODEL,
                max_tokens=8,
                messages=[
                    {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image", "source": source}]}
                ],
            )
        message = e.value.body["error"]["message"]
        assert message.startswith("messages.0.content.1"), message
        assert says in message, message


def test_openai_images_are_read_as_placeholders(server):
    client = oai(server)
    url = f"data:image/png;base64,{b64(png(32, 16))}"
    chat = client.chat.completions.create(
        model=REQUESTED_MODEL,
        max_tokens=8,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    plain = client.chat.completions.create(
        model=REQUESTED_MODEL,
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "What is this?\n\n" + PLACEHOLDER.format(w=32, h=16)}],
    )
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    assert chat.choices[0].message.content == plain.choices[0].message.content
    response = client.responses.create(
        model=REQUESTED_MODEL,
        max_output_tokens=16,
        temperature=0,
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url}],
            }
        ],
    )
    assert response.status in ("completed", "incomplete")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=REQUESTED_MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
        )
    assert e.value.body["param"] == "messages[0].content[0]", e.value.body


def test_images_reject_refuses_every_image_by_its_block(rejecting):
    with pytest.raises(anthropic.BadRequestError) as e:
        sdk(rejecting).messages.create(
            model=REQUESTED_MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, image_block()]}],
        )
    message = e.value.body["error"]["message"]
    assert message.startswith("messages.0.content.1: this model does not accept images"), message
    with pytest.raises(openai.BadRequestError) as e:
        oai(rejecting).chat.completions.create(
            model=REQUESTED_MODEL,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
                }
            ],
        )
    assert e.value.body["message"].startswith("messages[0].content[0]: this model does not accept images"), e.value.body
    # Text alone still works.
    reply = sdk(rejecting).messages.create(
        model=REQUESTED_MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.content is not None
