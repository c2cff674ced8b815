"""Images on the mlx engine (mlx-vlm in the worker), with the real Anthropic SDK.

The model is a random-weight LLaVA with SmolLM2's tokenizer (scripts/make-test-mlx-vlm.py,
made by scripts/setup-mlx-test.sh): what these tests show is that the image path works end to
end (the worker decodes and computes each image into the sequence's cache, its positions count
in usage and in count_tokens, and the prefix cache keeps it by the image's content), not that
the model sees well: its weights are noise.

Run in scripts/test.sh's mlx tier (PENSIEVE_TEST_ENGINE=mlx), skipped on the other engines, as
test_vision.py (mtmd) runs on the llama engine only. Needs PENSIEVE_MLX_PYTHON: a Python with
mlx, mlx-lm and mlx-vlm (`pensieve setup mlx`).
"""

from __future__ import annotations

import base64
import json

import anthropic
import pytest
from conftest import ENGINE, REQUESTED_MODEL, Server, mlx_model_dir
from helpers import T0, png, prompt_total
from test_mlx_engine import mlx_python

pytestmark = pytest.mark.skipif(ENGINE != "mlx", reason="mlx-vlm is the mlx engine's")

VLM = "llava-smollm2-random"


def image_block(data: bytes, media_type: str = "image/png") -> dict:
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": "image", "source": source}


def describe(*middle: dict) -> list[dict]:
    content = [{"type": "text", "text": "Describe this:"}, *middle, {"type": "text", "text": "In one word."}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def vlm_dir():
    return mlx_model_dir(VLM)


@pytest.fixture(scope="module")
def positions(vlm_dir) -> int:
    """An image's positions, from the model's own config: CLIP's patches, the CLS one dropped."""
    vision = json.loads((vlm_dir / "config.json").read_text())["vision_config"]
    return (vision["image_size"] // vision["patch_size"]) ** 2


@pytest.fixture(scope="module")
def server(vlm_dir):
    mlx_python()
    server = Server(vlm_dir, ["--engine", "mlx", "--ctx", "2048", "--parallel", "2"])
    try:
        server.start()
        yield server
    finally:
        server.close()


def sdk(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=180.0)


def count(client: anthropic.Anthropic, messages: list) -> int:
    return client.messages.count_tokens(model=REQUESTED_MODEL, messages=messages).input_tokens


def test_an_image_counts_as_its_positions_and_is_computed(server, positions):
    client = sdk(server)
    assert "through mlx-vlm" in server.log_tail(1_000_000)
    # The image's positions, and the line breaks that join its block to the others (how many
    # tokens those make depends on how they merge with the text around them).
    without = count(client, describe())
    with_image = describe(image_block(png(64, 48)))
    counted = count(client, with_image)
    assert without + positions <= counted <= without + positions + 2, (counted, without, positions)
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=8, messages=with_image, **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert prompt_total(reply.usage) == counted
    # Two images: twice the positions.
    between = {"type": "text", "text": "and"}
    two = describe(image_block(png(64, 48)), between, image_block(png(20, 20, grey=0x30)))
    text_only = count(client, describe(between))
    assert text_only + 2 * positions <= count(client, two) <= text_only + 2 * positions + 4
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=two, **T0)
    assert prompt_total(reply.usage) == count(client, two)


def test_the_same_image_comes_from_the_cache_and_another_does_not(server, positions):
    client = sdk(server)
    grey, dark = png(40, 40), png(40, 40, grey=0x20)
    lead = {"type": "text", "text": "Cache test, image follows:"}

    def ask(data: bytes):
        messages = [{"role": "user", "content": [lead, image_block(data), {"type": "text", "text": "Colour?"}]}]
        return client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=messages, **T0)

    first, again, other = ask(grey), ask(grey), ask(dark)
    total = prompt_total(first.usage)
    assert prompt_total(again.usage) == prompt_total(other.usage) == total
    # The whole prompt but its last token from the cache, the image included; the same answer.
    assert (again.usage.cache_read_input_tokens or 0) >= total - 2, (first.usage, again.usage)
    assert again.content == first.content
    # Another image: read only up to where it starts.
    assert (other.usage.cache_read_input_tokens or 0) <= (again.usage.cache_read_input_tokens or 0) - positions, (
        again.usage,
        other.usage,
    )


def test_what_is_no_image_is_a_400_naming_its_block(server):
    client = sdk(server)
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
    for data, media_type in ((b"this is not an image at all", "image/png"), (avif, "image/avif")):
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.count_tokens(model=REQUESTED_MODEL, messages=describe(image_block(data, media_type)))
        assert "messages.0.content.1" in str(e.value), e.value


def test_an_image_pillow_cannot_decode_fails_only_its_request(server):
    """A PNG whose header reads but whose data is cut: only the worker's Pillow finds out.
    That request gets a 400 naming its block; the next one, with an image, is served."""
    client = sdk(server)
    broken = png(16, 16)[:40] + b"\x00" * 64
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=describe(image_block(broken)), **T0)
    assert "messages.0.content.1" in str(e.value) and "not an image Pillow can decode" in str(e.value), e.value
    reply = client.messages.create(model=REQUESTED_MODEL, max_tokens=4, messages=describe(image_block(png(8, 8))), **T0)
    assert reply.stop_reason in ("end_turn", "max_tokens")
