"""The MLX worker (pensieve_mlx/worker.py) driven as a subprocess over PROTOCOL.md.

Needs an MLX model folder of SmolLM2-135M-Instruct: PENSIEVE_MLX_TEST_MODEL, by default
~/.cache/pensieve/test-models/mlx/SmolLM2-135M-Instruct.Q4_1 (scripts/setup-mlx-test.sh makes it
with pensieve_mlx/convert.py).
"""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve().parents[1] / "pensieve_mlx" / "worker.py"
MODEL = Path(
    os.environ.get(
        "PENSIEVE_MLX_TEST_MODEL",
        Path.home() / ".cache/pensieve/test-models/mlx/SmolLM2-135M-Instruct.Q4_1",
    )
)
VOCAB = 49152
# ChatML, short: on the CPU build of MLX every prompt token costs about as much as a step.
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
STEPS = 24


def load_worker_module():
    spec = importlib.util.spec_from_file_location("pensieve_mlx_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WorkerError(Exception):
    """The worker answered status 1."""


class Client:
    """A worker process and the request/response framing of PROTOCOL.md (no HELLO sent
    when `sequences` is 0)."""

    def __init__(self, sequences=4, context=4096, model=None):
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if sequences:
            self.hello = json.loads(self.call(1, self.hello_body(sequences, context, model=model)))

    @staticmethod
    def hello_body(sequences, context, version=1, model=None):
        params = {"model": str(model or MODEL), "sequences": sequences, "context": context}
        return struct.pack("<I", version) + json.dumps(params).encode()

    def call(self, op, body=b""):
        payload = bytes([op]) + body
        self.proc.stdin.write(struct.pack("<I", len(payload)) + payload)
        self.proc.stdin.flush()
        (n,) = struct.unpack("<I", self.read(4))
        answer = self.read(n)
        if answer[0] == 1:
            raise WorkerError(answer[1:].decode())
        assert answer[0] == 0, f"status {answer[0]}"
        return answer[1:]

    def read(self, n):
        data = self.proc.stdout.read(n)
        assert len(data) == n, "the worker closed its output"
        return data

    def start_sampling(self, seq, **params):
        self.call(2, struct.pack("<I", seq) + json.dumps(params).encode())

    def decode(self, entries):
        """entries: (seq, token, pos, logits); returns [(index, token)]."""
        body = struct.pack("<I", len(entries))
        body += b"".join(struct.pack("<IiIB", s, t, p, int(f)) for s, t, p, f in entries)
        out = self.call(3, body)
        (m,) = struct.unpack_from("<I", out)
        assert len(out) == 4 + 8 * m
        return [struct.unpack_from("<Ii", out, 4 + 8 * i) for i in range(m)]

    def sample(self, seq, index, mask_words):
        body = struct.pack(f"<III{len(mask_words)}I", seq, index, len(mask_words), *mask_words)
        return struct.unpack("<i", self.call(4, body))[0]

    def logprobs(self, index, token, top):
        out = self.call(5, struct.pack("<IiI", index, token, top))
        logprob, k = struct.unpack_from("<fI", out)
        assert len(out) == 8 + 8 * k
        return logprob, [struct.unpack_from("<if", out, 8 + 8 * i) for i in range(k)]

    def truncate(self, seq, start):
        return self.call(6, struct.pack("<II", seq, start)) == b"\x01"

    def release(self, seq):
        assert self.call(7, struct.pack("<I", seq)) == b""

    def save(self, seq):
        return self.call(8, struct.pack("<I", seq))

    def restore(self, seq, snapshot):
        assert self.call(9, struct.pack("<I", seq) + snapshot) == b""

    def share(self, src, dst, length):
        assert self.call(10, struct.pack("<III", src, dst, length)) == b""

    def feed(self, seq, tokens, start):
        """Decode `tokens` at positions start.., keeping the last one's logits: its token."""
        entries = [(seq, t, start + i, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        [(index, token)] = self.decode(entries)
        assert index == len(tokens) - 1
        return token

    def extend(self, seq, token, pos, steps):
        """Feed `token` at `pos`, then each sampled token after it: `steps` tokens."""
        out = []
        for _ in range(steps):
            token = self.feed(seq, [token], pos)
            out.append(token)
            pos += 1
        return out

    def generate(self, seq, prompt, steps, start=0):
        """`steps` tokens after the prompt, of which `seq` already holds prompt[:start].
        Afterwards the sequence holds the prompt and all but the last token."""
        first = self.feed(seq, prompt[start:], start)
        return [first] + self.extend(seq, first, len(prompt), steps - 1)

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def model():
    if not (MODEL / "config.json").exists():
        pytest.skip(
            f"no MLX test model at {MODEL} (set PENSIEVE_MLX_TEST_MODEL, or make it with scripts/setup-mlx-test.sh)"
        )
    return MODEL


@pytest.fixture(scope="module")
def worker(model):
    client = Client()
    yield client
    # SHUTDOWN: answered, then the worker exits 0.
    assert client.call(11) == b""
    assert client.proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def prompt(model):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model / "tokenizer.json")).encode(PROMPT).ids


@pytest.fixture(scope="module")
def reference(model, prompt):
    """mlx_lm's own greedy continuation of the prompt, and its speed."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load

    mlx_model, _ = load(str(model))
    step = generate_step(mx.array(prompt), mlx_model, max_tokens=STEPS)
    tokens = [next(step)[0]]
    started = time.perf_counter()
    tokens += [token for token, _ in step]
    return tokens, (STEPS - 1) / (time.perf_counter() - started)


def test_hello(worker):
    assert worker.hello["version"] == 1
    assert worker.hello["vocab_size"] == VOCAB
    assert worker.hello["can_truncate"] is True
    # 30 layers x (keys + values) x 3 KV heads x 64 dims x float32.
    assert worker.hello["kv_bytes_per_token"] == 30 * 2 * 3 * 64 * 4
    assert worker.hello["model_type"] == "llama"


def test_greedy_matches_mlx_lm(worker, prompt, reference):
    expected, reference_speed = reference
    first = worker.feed(0, prompt, 0)
    started = time.perf_counter()
    rest = worker.extend(0, first, len(prompt), STEPS - 1)
    speed = (STEPS - 1) / (time.perf_counter() - started)
    assert [first] + rest == expected
    print(f"greedy decode: worker {speed:.1f} tokens/s, mlx_lm {reference_speed:.1f} tokens/s")
    worker.release(0)


def test_prefix_reuse(worker, prompt, reference):
    expected, _ = reference
    p = len(prompt)
    assert worker.generate(1, prompt, 8) == expected[:8]

    # Cut back into the prompt and go again.
    assert worker.truncate(1, p - 1)
    assert worker.generate(1, prompt, 8, start=p - 1) == expected[:8]

    # A copy of the prompt's prefix continues like the source, and both go on
    # independently, in one batch and apart.
    worker.share(1, 2, p - 1)
    assert worker.generate(2, prompt, 8, start=p - 1) == expected[:8]
    both = [(1, expected[7], p + 7, True), (2, expected[7], p + 7, True)]
    assert worker.decode(both) == [(0, expected[8]), (1, expected[8])]
    assert worker.extend(1, expected[8], p + 8, 8) == expected[9:17]
    assert worker.extend(2, expected[8], p + 8, 4) == expected[9:13]

    # A snapshot outlives its sequence and goes into another slot.
    snapshot = worker.save(1)
    worker.release(1)
    worker.restore(3, snapshot)
    assert worker.extend(3, expected[16], p + 16, 7) == expected[17:24]
    # The released slot starts from nothing.
    worker.feed(1, prompt[:2], 0)
    for seq in (1, 2, 3):
        worker.release(seq)


def test_restore_refuses_another_model(worker, prompt):
    worker.feed(1, prompt[:4], 0)
    snapshot = worker.save(1)
    worker.release(1)
    magic, (n,) = snapshot[:8], struct.unpack_from("<I", snapshot, 8)
    header, data = json.loads(snapshot[12 : 12 + n]), snapshot[12 + n :]

    def tampered(change):
        h = json.loads(json.dumps(header))
        change(h)
        head = json.dumps(h).encode()
        return magic + struct.pack("<I", len(head)) + head + data

    # Same bytes, other shapes: one KV head of thrice the positions.
    other_shape = tampered(lambda h: h["arrays"][0].__setitem__(1, [1, 1, 12, 64]))
    other_vocab = tampered(lambda h: h.__setitem__("vocab_size", VOCAB + 1))
    for blob in (other_shape, other_vocab, snapshot[:-1], b"junk"):
        with pytest.raises(WorkerError):
            worker.restore(1, blob)
    # Refused snapshots leave the slot as it was (empty).
    assert worker.feed(1, prompt[:4], 0) >= 0
    worker.release(1)


def test_sample_with_mask_and_logprobs(worker, prompt):
    greedy = worker.feed(0, prompt, 0)
    index = len(prompt) - 1
    only_42 = [0] * (VOCAB // 32)
    only_42[42 // 32] = 1 << (42 % 32)
    assert worker.sample(0, index, only_42) == 42
    with pytest.raises(WorkerError, match="allows no token"):
        worker.sample(0, index, [])

    logprob, top = worker.logprobs(index, greedy, 5)
    assert len(top) == 5
    assert top[0] == (greedy, logprob)
    values = [lp for _, lp in top]
    assert all(v <= 0 for v in values)
    assert values == sorted(values, reverse=True)
    _, everything = worker.logprobs(index, greedy, VOCAB)
    assert sorted(t for t, _ in everything) == list(range(VOCAB))
    assert abs(sum(np.exp(lp) for _, lp in everything) - 1) < 1e-3

    # A sampler's mask works the same; a bias steers even greedy decoding.
    worker.start_sampling(0, temperature=0.8, seed=7)
    assert worker.sample(0, index, only_42) == 42
    worker.release(0)
    worker.start_sampling(0, temperature=0, logit_bias={"42": 100.0})
    assert worker.feed(0, prompt[:2], 0) == 42
    worker.release(0)


def test_a_draft_is_checked_in_one_decode(worker, prompt, reference):
    """Speculative decoding's check: the pending token and three drafted ones in one DECODE,
    all flagged, give the token after each; the rejected one is cut off and generation goes on
    as without speculation."""
    expected, _ = reference
    p = len(prompt)
    assert worker.feed(0, prompt, 0) == expected[0]
    wrong = (expected[3] + 1) % VOCAB
    drafted = [expected[0], expected[1], expected[2], wrong]
    out = worker.decode([(0, t, p + i, True) for i, t in enumerate(drafted)])
    assert [index for index, _ in out] == [0, 1, 2, 3]
    # The two drafted tokens that are right stand; the token after them is not `wrong`.
    assert [t for _, t in out[:3]] == expected[1:4]
    assert worker.truncate(0, p + 3)
    assert worker.extend(0, expected[3], p + 3, 6) == expected[4:10]
    worker.release(0)


def test_tokens_sampled_after_rejected_drafts_do_not_count_for_penalties(worker, prompt):
    # A penalty no logit margin survives: a token counted once too often is never picked.
    params = dict(temperature=0, frequency_penalty=50.0)
    worker.start_sampling(0, **params)
    plain = worker.generate(0, prompt, 10)
    worker.release(0)
    worker.start_sampling(1, **params)
    p = len(prompt)
    assert worker.feed(1, prompt, 0) == plain[0]
    # A draft of two tokens, rejected at once: the tokens sampled after them (the next two
    # of the plain run) were never used, and must not weigh on what comes next.
    out = worker.decode([(1, plain[0], p, True), (1, plain[1], p + 1, True), (1, plain[2], p + 2, True)])
    assert [t for _, t in out] == plain[1:4]
    assert worker.truncate(1, p + 1)
    assert worker.extend(1, plain[1], p + 1, 8) == plain[2:10]
    worker.release(1)


def test_seeded_sampling_repeats(worker, prompt):
    params = dict(
        temperature=0.8,
        seed=1234,
        top_p=0.95,
        top_k=50,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        logit_bias={"13": -5.0},
    )
    runs = []
    for _ in range(2):
        worker.start_sampling(2, **params)
        runs.append(worker.generate(2, prompt, 12))
        worker.release(2)
    assert runs[0] == runs[1]
    assert all(0 <= t < VOCAB for t in runs[0])


def test_errors_leave_the_worker_serving(prompt):
    client = Client(sequences=2)
    with pytest.raises(WorkerError, match="position"):
        client.decode([(0, prompt[0], 1, True)])
    # One bad sequence refuses the whole batch: sequence 1 gets nothing either.
    with pytest.raises(WorkerError, match="position"):
        client.decode([(1, prompt[0], 0, False), (0, prompt[0], 5, True)])
    with pytest.raises(WorkerError, match="out of range"):
        client.decode([(7, prompt[0], 0, True)])
    with pytest.raises(WorkerError, match="vocabulary"):
        client.decode([(0, VOCAB, 0, True)])
    with pytest.raises(WorkerError, match="unknown op"):
        client.call(99)
    assert len(client.decode([(1, prompt[0], 0, False), (0, prompt[0], 0, True)])) == 1
    # End-of-file on stdin: the worker exits 0.
    client.close()


def test_sampler_rules():
    """The sampling chain on hand-made logits (no model needed)."""
    worker_module = load_worker_module()
    Sampler = worker_module.Sampler
    vocab = 4

    def pick(logits, allowed=None, **params):
        return Sampler(params, vocab).pick(np.array(logits, np.float32), allowed)

    # Greedy takes the first of the highest logits; top-k 1 and a tiny top-p leave only it.
    assert pick([1, 3, 3, 0], temperature=0) == 1
    assert pick([1, 3, 2, 0], top_k=1, seed=1) == 1
    assert pick([1, 3, 2, 0], top_p=0.01, seed=1) == 1
    assert pick([1, 3, 3, 0], np.array([True, False, True, True]), temperature=0) == 2
    assert pick([1, 3, 2, 0], temperature=0, logit_bias={"3": 10}) == 3
    # min-p keeps the tokens at least that fraction as likely as the best: here only it.
    assert all(pick([0, 3, 2.5, 0], min_p=0.9, seed=i) == 1 for i in range(20))

    # Frequency and presence penalties count the accepted tokens (OpenAI's formula).
    s = Sampler({"temperature": 0, "frequency_penalty": 0.3, "presence_penalty": 0.5}, vocab)
    logits = np.array([2.0, 1.5, 0.0, 0.0], np.float32)
    assert s.pick(logits) == 0
    s.accept(0)
    assert s.pick(logits) == 1  # 2.0 - 0.3 - 0.5 < 1.5
    s.forget(0)
    assert s.pick(logits) == 0

    # Draws follow the softmax at the temperature, and a seed repeats them.
    s = Sampler({"seed": 5}, vocab)
    logits = np.log(np.array([1, 3, 0, 0], np.float32) + 1e-30).astype(np.float32)
    draws = [s.pick(logits) for _ in range(2000)]
    assert set(draws) == {0, 1}
    assert 0.7 < draws.count(1) / len(draws) < 0.8
    again = Sampler({"seed": 5}, vocab)
    assert [again.pick(logits) for _ in range(2000)] == draws

    for bad in ({"temperature": -1}, {"top_k": 1.5}, {"min_p": 2}, {"logit_bias": {"9": 1}}, {"seed": -1}):
        with pytest.raises(worker_module.Refused):
            Sampler(bad, vocab)


def test_requests_before_hello():
    """Without a model: a wrong version and early requests are refused; EOF exits 0."""
    client = Client(sequences=0)
    with pytest.raises(WorkerError, match="version 2"):
        client.call(1, Client.hello_body(1, 64, version=2))
    with pytest.raises(WorkerError, match="HELLO first"):
        client.decode([(0, 1, 0, True)])
    with pytest.raises(WorkerError, match="too short"):
        client.call(1, b"\x01")
    client.close()


# --- Images (DECODE_MEDIA) on a vision model ---------------------------------------------------

VLM = Path(
    os.environ.get(
        "PENSIEVE_MLX_TEST_VLM",
        Path.home() / ".cache/pensieve/test-models/mlx/llava-smollm2-random",
    )
)
DECODE_MEDIA = 12


def png_bytes(seed, width, height):
    """A random RGB picture, PNG-encoded (what a request carries, base64-decoded)."""
    import io

    from PIL import Image

    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def decode_media(client, seq, pos, n, data):
    return client.call(DECODE_MEDIA, struct.pack("<III", seq, pos, n) + data)


@pytest.fixture(scope="module")
def vlm():
    if not (VLM / "config.json").exists():
        pytest.skip(
            f"no MLX vision test model at {VLM} (set PENSIEVE_MLX_TEST_VLM, or make it with scripts/setup-mlx-test.sh)"
        )
    return VLM


@pytest.fixture(scope="module")
def vlm_worker(vlm):
    client = Client(sequences=3, context=512, model=vlm)
    yield client
    client.close()


@pytest.fixture(scope="module")
def vlm_prompt(vlm):
    """'text A <image> text B' as the Rust side lays it out: the text around one image
    token, tokenized whole, then that token repeated for each of the image's positions."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(vlm / "tokenizer.json"))
    text = "<|im_start|>user\nLook at this: <image> What is in the picture?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text).ids
    image_id = tok.token_to_id("<image>")
    at = ids.index(image_id)
    return ids[:at], image_id, ids[at + 1 :]


def vlm_reference(vlm, before, image_id, positions, after, image, steps):
    """mlx_vlm's own whole-prompt run: the prompt's embeddings (text and image) through the
    language model at once; the last position's log-probabilities and the greedy tokens."""
    import io

    import mlx.core as mx
    import mlx_vlm
    from mlx_vlm.models import cache as vlm_cache
    from PIL import Image

    model, processor = mlx_vlm.load(str(vlm))
    ids = before + [image_id] * positions + after
    pv = processor.image_processor(images=[Image.open(io.BytesIO(image)).convert("RGB")])["pixel_values"]
    emb = model.get_input_embeddings(
        mx.array([ids]), mx.array(np.asarray(pv)), mask=mx.ones((1, len(ids)))
    ).inputs_embeds
    cache = vlm_cache.make_prompt_cache(model.language_model)
    logits = model.language_model(None, inputs_embeds=emb, cache=cache).logits[0, -1].astype(mx.float32)
    row = np.array(logits).astype(np.float64)
    logprobs = row - row.max() - np.log(np.exp(row - row.max()).sum())
    tokens = [int(np.argmax(row))]
    for _ in range(steps - 1):
        out = model.language_model(mx.array([[tokens[-1]]]), cache=cache).logits[0, -1]
        tokens.append(int(np.argmax(np.array(out.astype(mx.float32)))))
    return logprobs, tokens


def test_vision_hello(vlm_worker):
    vision = vlm_worker.hello["vision"]
    # 112 / 14 = 8 x 8 patches.
    assert vision["positions"] == 64
    assert vision["image_token"] == "<image>"
    assert (vision["before"], vision["after"]) == ("", "")
    assert vision["mlx_vlm"]
    assert vlm_worker.hello["model_type"] == "llava"
    assert vlm_worker.hello["can_truncate"] is True


def test_an_image_staged_equals_the_whole_prompt(vlm, vlm_worker, vlm_prompt):
    """Text, the image whole (DECODE_MEDIA), then text: the same log-probabilities and
    greedy tokens as mlx_vlm running the whole prompt at once."""
    before, image_id, after = vlm_prompt
    n = vlm_worker.hello["vision"]["positions"]
    image = png_bytes(0, 140, 90)
    steps = 8
    expected_lp, expected = vlm_reference(vlm, before, image_id, n, after, image, steps)

    assert vlm_worker.decode([(0, t, i, False) for i, t in enumerate(before)]) == []
    assert decode_media(vlm_worker, 0, len(before), n, image) == b""
    start = len(before) + n
    first = vlm_worker.feed(0, after, start)
    _, everything = vlm_worker.logprobs(len(after) - 1, first, len(expected_lp))
    got = np.zeros_like(expected_lp)
    for token, lp in everything:
        got[token] = lp
    assert np.max(np.abs(got - expected_lp)) < 1e-4
    end = start + len(after)
    assert [first] + vlm_worker.extend(0, first, end, steps - 1) == expected

    # The image's positions are cache like any other: a copy through it goes on the same way,
    # and so does a snapshot.
    vlm_worker.share(0, 1, end)
    assert vlm_worker.extend(1, first, end, steps - 1) == expected[1:]
    snapshot = vlm_worker.save(1)
    vlm_worker.restore(2, snapshot)
    assert vlm_worker.truncate(2, end)
    assert vlm_worker.extend(2, first, end, 3) == expected[1:4]
    # Another image in the same place leads elsewhere.
    for seq in (0, 1, 2):
        vlm_worker.release(seq)
    vlm_worker.decode([(0, t, i, False) for i, t in enumerate(before)])
    decode_media(vlm_worker, 0, len(before), n, png_bytes(1, 140, 90))
    vlm_worker.feed(0, after, start)
    _, other = vlm_worker.logprobs(len(after) - 1, first, len(expected_lp))
    assert max(abs(lp - got[t]) for t, lp in other) > 1e-3
    vlm_worker.release(0)


def test_decode_media_refusals_change_nothing(vlm_worker, vlm_prompt):
    before, _, after = vlm_prompt
    n = vlm_worker.hello["vision"]["positions"]
    image = png_bytes(2, 32, 32)
    vlm_worker.decode([(0, t, i, False) for i, t in enumerate(before)])
    p = len(before)
    with pytest.raises(WorkerError, match="not an image"):
        decode_media(vlm_worker, 0, p, n, b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(WorkerError, match="expected"):
        decode_media(vlm_worker, 0, p + 1, n, image)
    with pytest.raises(WorkerError, match=f"takes {n} positions"):
        decode_media(vlm_worker, 0, p, n - 1, image)
    with pytest.raises(WorkerError, match="out of range"):
        decode_media(vlm_worker, 9, 0, n, image)
    # The sequence still holds its text only: the image goes in where it ended.
    assert decode_media(vlm_worker, 0, p, n, image) == b""
    assert vlm_worker.feed(0, after, p + n) >= 0
    vlm_worker.release(0)


def test_an_image_past_the_context_is_refused(vlm):
    client = Client(sequences=1, context=80, model=vlm)
    n = client.hello["vision"]["positions"]
    client.decode([(0, 1, i, False) for i in range(20)])
    with pytest.raises(WorkerError, match="beyond the context"):
        decode_media(client, 0, 20, n, png_bytes(3, 32, 32))
    # Refused whole: the sequence still holds its 20 positions, and an image fits after 16.
    assert client.truncate(0, 16)
    assert decode_media(client, 0, 16, n, png_bytes(3, 32, 32)) == b""
    client.close()


def test_a_text_model_takes_no_images(worker):
    with pytest.raises(WorkerError, match="no images"):
        decode_media(worker, 0, 0, 4, png_bytes(4, 8, 8))


def test_unsupported_vision_models_are_refused_at_hello(tmp_path):
    """A vision folder of a family whose images the worker can't place is refused by name,
    before any weights are read."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "vision_config": {}}))
    client = Client(sequences=0)
    with pytest.raises(WorkerError, match="qwen2_vl.*LLaVA, Gemma 3"):
        client.call(1, Client.hello_body(1, 64, model=tmp_path))
    client.close()
