"""Pensieve's MLX worker: one model, a KV cache per sequence slot, and the samplers.

The Rust scheduler starts this file as `python worker.py` and drives it over stdin/stdout
with the frames of PROTOCOL.md (version 1); stderr is the log. Rust owns tokenisation,
scheduling and the prefix-cache policy. This process owns:

- the model, loaded with mlx_lm's loader; a vision model (its config.json has a
  `vision_config`) with mlx_vlm's, imported only then, so that text models need no mlx-vlm;
- one list of mlx_lm cache objects per slot (make_prompt_cache), and the slot's length;
- the logits of the last DECODE's flagged entries (float32), for SAMPLE and LOGPROBS;
- one sampler per slot (bias, penalties, top-k, top-p, temperature, a seeded generator).

A refused or failed request is answered with status 1 and a message; the worker keeps
serving. It exits 0 on SHUTDOWN or at end-of-file on stdin.

Self-contained on purpose (stdlib, numpy, mlx, mlx_lm; mlx_vlm and Pillow for vision models):
the Rust binary embeds this file.
"""

import json
import logging
import math
import os
import struct
import sys

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx_lm.models import cache as cache_lib
from mlx_lm.utils import load

VERSION = 1

HELLO, START_SAMPLING, DECODE, SAMPLE, LOGPROBS = 1, 2, 3, 4, 5
TRUNCATE, RELEASE, SAVE, RESTORE, SHARE, SHUTDOWN = 6, 7, 8, 9, 10, 11
DECODE_MEDIA = 12

# mlx_vlm model types whose images the worker computes: one image is a fixed number of
# positions of one image token, placed with ordinary (1-D) positions, so the Rust side can
# lay a prompt out by itself. Others are refused at HELLO rather than served wrong.
VISION_TYPES = {"llava": "LLaVA", "gemma3": "Gemma 3"}

# One DECODE entry on the wire: u32 seq, i32 token, u32 pos, u8 logits (packed, 13 bytes).
ENTRY = np.dtype([("seq", "<u4"), ("token", "<i4"), ("pos", "<u4"), ("logits", "u1")])
TOP_ENTRY = np.dtype([("token", "<i4"), ("logprob", "<f4")])

SNAPSHOT_MAGIC = b"PMLXKV01"

log = logging.getLogger("pensieve-mlx")


class Refused(Exception):
    """A request the worker does not carry out; its message goes back with status 1."""


class Body:
    """Reads the little-endian fields of a request body in order."""

    def __init__(self, data):
        self.data = data
        self.at = 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise Refused("request body too short")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def i32(self):
        return struct.unpack("<i", self.take(4))[0]

    def rest(self):
        return self.take(len(self.data) - self.at)

    def end(self):
        if self.at != len(self.data):
            raise Refused(f"{len(self.data) - self.at} unexpected bytes at the end of the request")


class Sampler:
    """The sampling state of one generation (START_SAMPLING's parameters)."""

    def __init__(self, params, vocab):
        def number(key, default, low=-math.inf):
            value = params.get(key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Refused(f"{key} must be a number")
            if not math.isfinite(value) or value < low:
                raise Refused(f"{key} out of range: {value}")
            return value

        self.temperature = float(number("temperature", 1.0, low=0.0))
        top_p = number("top_p", None)
        self.top_p = None if top_p is None or top_p >= 1.0 else float(top_p)
        top_k = number("top_k", 0, low=0)
        if top_k != int(top_k):
            raise Refused("top_k must be an integer")
        self.top_k = int(top_k) if 0 < top_k < vocab else None
        min_p = number("min_p", None, low=0.0)
        if min_p is not None and min_p > 1.0:
            raise Refused(f"min_p out of range: {min_p}")
        self.min_p = float(min_p) if min_p else None
        self.presence = float(number("presence_penalty", 0.0))
        self.frequency = float(number("frequency_penalty", 0.0))
        seed = number("seed", None, low=0)
        if seed is not None and seed != int(seed):
            raise Refused("seed must be an integer")
        self.rng = np.random.default_rng(None if seed is None else int(seed))

        bias = params.get("logit_bias") or {}
        if not isinstance(bias, dict):
            raise Refused("logit_bias must be an object")
        summed = {}
        for key, value in bias.items():
            try:
                token = int(key)
            except ValueError:
                raise Refused(f"logit_bias key {key!r} is not a token id") from None
            if not 0 <= token < vocab:
                raise Refused(f"logit_bias token {token} outside the vocabulary")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Refused("logit_bias values must be numbers")
            if not math.isfinite(value):
                raise Refused(f"logit_bias of {token} is not finite")
            # "13" and "013" name the same token: their biases add up.
            summed[token] = summed.get(token, 0.0) + value
        self.bias_ids = np.fromiter(summed.keys(), np.int64, len(summed))
        self.bias_values = np.fromiter(summed.values(), np.float32, len(summed))

        # Tokens sampled since START_SAMPLING, for the penalties: token -> count.
        self.counts = {}

    def accept(self, token):
        self.counts[token] = self.counts.get(token, 0) + 1

    def forget(self, token):
        left = self.counts.get(token, 0) - 1
        if left > 0:
            self.counts[token] = left
        else:
            self.counts.pop(token, None)

    def pick(self, logits, allowed=None):
        """A token from `logits` (float32, untouched), among `allowed` (bools) if given."""
        x = logits.copy()
        if self.bias_ids.size:
            x[self.bias_ids] += self.bias_values
        if self.counts and (self.presence or self.frequency):
            ids = np.fromiter(self.counts.keys(), np.int64, len(self.counts))
            n = np.fromiter(self.counts.values(), np.float32, len(self.counts))
            x[ids] -= n * np.float32(self.frequency) + np.float32(self.presence)
        if allowed is not None:
            x[~allowed] = -np.inf
        if not np.isfinite(x).any():
            # Penalties overflowed every candidate: the raw logits decide.
            return greedy(logits, allowed)
        if self.temperature == 0.0:
            return int(np.argmax(x))

        if self.top_k is not None:
            ids = np.argpartition(-x, self.top_k - 1)[: self.top_k]
        else:
            ids = np.arange(x.size)
        if self.top_p is not None:
            ids = ids[np.argsort(-x[ids], kind="stable")]
            p = softmax(x[ids])
            keep = int(np.searchsorted(np.cumsum(p), self.top_p)) + 1
            ids = ids[:keep]
        if self.min_p is not None:
            p = softmax(x[ids])
            ids = ids[p >= np.float32(self.min_p) * p.max()]
        p = softmax(x[ids] / np.float32(self.temperature))
        cumulative = np.cumsum(p, dtype=np.float64)
        # side="right" never lands on a zero-probability (forbidden) token.
        i = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def greedy(logits, allowed=None):
    """The first of the highest logits (among `allowed`)."""
    if allowed is None:
        return int(np.argmax(logits))
    return int(np.argmax(np.where(allowed, logits, -np.inf)))


class Kept:
    """A flagged entry of the last DECODE: its logits and the token used for it."""

    def __init__(self, seq, pos, logits, token, sampler):
        self.seq = seq
        self.pos = pos
        self.logits = logits
        self.token = token
        # The sampler that counted `token`: SAMPLE takes it back from that one only.
        self.sampler = sampler


class Slot:
    """One sequence: its cache (None while empty), length and sampler (None: greedy)."""

    def __init__(self):
        self.cache = None
        self.length = 0
        self.sampler = None

    def clear(self):
        self.cache = None
        self.length = 0


def trims_anywhere(layer):
    """Whether this kind of layer cache can always be cut back to any position."""
    if isinstance(layer, cache_lib.CacheList):
        return all(trims_anywhere(c) for c in layer.caches)
    return type(layer) in (cache_lib.KVCache, cache_lib.QuantizedKVCache)


def can_cut_now(layer):
    """Whether this layer cache, as it is, can be cut back to any position."""
    if isinstance(layer, cache_lib.CacheList):
        return all(can_cut_now(c) for c in layer.caches)
    if type(layer) is cache_lib.RotatingKVCache:
        # Nothing has rotated out of the window yet.
        return layer.is_trimmable()
    return trims_anywhere(layer)


def kv_bytes_per_token(layer):
    """Bytes one more position adds to this layer's cache (0 for fixed-size state)."""
    if isinstance(layer, cache_lib.CacheList):
        return sum(kv_bytes_per_token(c) for c in layer.caches)
    keys = getattr(layer, "keys", None)
    if not isinstance(keys, mx.array):
        return 0
    # (batch, kv heads, positions, head dim)
    return sum(a.shape[1] * a.shape[3] * a.itemsize for a in (layer.keys, layer.values))


def copy_state(tree):
    """The same state tree with every array a new object (slice assignment mutates arrays)."""
    if isinstance(tree, mx.array):
        return mx.array(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(copy_state(t) for t in tree)
    return tree


def prefix_copy(layer, length, total):
    """A copy of positions 0..length of a layer cache holding `total` positions (cuttable)."""
    if type(layer) is cache_lib.KVCache:
        # Only the prefix, not the whole buffer.
        keys, values = (mx.contiguous(a[..., :length, :]) for a in (layer.keys, layer.values))
        return cache_lib.KVCache.from_state((keys, values, length))
    copy = type(layer).from_state(copy_state(layer.state))
    if length < total:
        copy.trim(total - length)
    return copy


def compact_state(layer):
    """The layer's state for a snapshot: a plain KVCache without its unused capacity."""
    if type(layer) is cache_lib.KVCache and layer.keys is not None:
        n = layer.offset
        return layer.keys[..., :n, :], layer.values[..., :n, :], n
    return layer.state


def array_leaves(tree):
    if isinstance(tree, mx.array):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for t in tree:
            yield from array_leaves(t)


def describe(state):
    """What a snapshot's layer must agree on with this model: dtypes and every axis of each
    array but the positions axis (-2)."""
    return [[str(a.dtype), list(a.shape[:-2]) + list(a.shape[-1:])] for a in array_leaves(state)]


def mx_dtype(name):
    dtype = getattr(mx, name.rsplit(".", 1)[-1], None)
    if not isinstance(dtype, mx.Dtype):
        raise Refused(f"snapshot has an unknown dtype {name}")
    return dtype


def raw_bytes(a):
    """The array's bytes (through an unsigned view: numpy has no bfloat16)."""
    if a.dtype == mx.bool_:
        return np.array(a).tobytes()
    return np.array(a.view(getattr(mx, f"uint{a.itemsize * 8}"))).tobytes()


def from_raw(data, dtype, shape):
    if dtype == mx.bool_:
        return mx.array(np.frombuffer(data, np.bool_).reshape(shape))
    carrier = np.frombuffer(data, f"<u{dtype.size}").reshape(shape)
    return mx.array(carrier).view(dtype)


def model_config(path):
    """The folder's config.json, or None (a Hub id, or no such file: mlx_lm's loader decides)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


class VisionLanguageModel:
    """mlx_vlm's language model as the worker calls an mlx_lm model (logits out), with
    mlx_lm's cache classes of the kinds mlx_vlm picks, so that TRUNCATE, SHARE, SAVE and
    RESTORE work on its slots unchanged."""

    def __init__(self, vlm_model):
        self.lm = vlm_model.language_model

    @property
    def layers(self):
        return self.lm.layers

    def make_cache(self):
        from mlx_vlm.models import cache as vlm_cache

        out = []
        for c in vlm_cache.make_prompt_cache(self.lm):
            if type(c) is vlm_cache.KVCache:
                out.append(cache_lib.KVCache())
            elif type(c) is vlm_cache.RotatingKVCache:
                out.append(cache_lib.RotatingKVCache(max_size=c.max_size, keep=c.keep))
            else:
                raise Refused(f"no mlx_lm cache for mlx_vlm's {type(c).__name__}")
        return out

    def __call__(self, inputs, cache=None, inputs_embeds=None):
        # Lazy: the vocabulary projection is computed only if the logits are evaluated.
        return self.lm(inputs, inputs_embeds=inputs_embeds, cache=cache).logits


class Vision:
    """A vision model's image path: Pillow decodes an image, mlx_vlm's processor prepares
    it, and the vision tower and projector make its embeddings, which DECODE_MEDIA runs
    through the language model into a slot's cache.

    `layout()` is what HELLO tells the Rust side so that it lays a prompt out without asking
    the worker: an image is `before` (text), the image token `positions` times, `after`
    (text), exactly as mlx_vlm's processor expands the model's placeholder."""

    def __init__(self, model, processor, model_type):
        self.model = model
        self.processor = processor
        self.model_type = model_type
        cfg = model.config
        image_id = getattr(cfg, "image_token_index", None)
        if image_id is None:
            image_id = getattr(cfg, "image_token_id", None)
        if not isinstance(image_id, int):
            raise Refused(f"this {model_type} model's config names no image token")
        self.image_id = image_id
        ip = processor.image_processor
        if getattr(ip, "do_pan_and_scan", None):
            # Pan-and-scan adds crops, and positions, that depend on the image.
            log.info("pan-and-scan turned off: every image takes the same positions")
            ip.do_pan_and_scan = False
        self.positions, self.before, self.after = self.expansion()
        # The tower and projector once, on a blank image: a check that an image fills its
        # positions, and a warm-up.
        emb = self.embed(self.blank(64, 48))
        if emb.shape[1] != self.positions:
            raise Refused(f"the projector makes {emb.shape[1]} positions of an image, the processor {self.positions}")

    @staticmethod
    def blank(width, height):
        from PIL import Image

        return Image.new("RGB", (width, height), (128, 128, 128))

    def expansion(self):
        """How the processor expands an image's placeholder: (positions, before, after).
        Read off the processor itself, then checked: the tokenizer on before + image token
        + after must give what the processor gives, for two image shapes."""
        processor, tok = self.processor, self.processor.tokenizer
        image_text = tok.convert_ids_to_tokens(self.image_id)
        # Gemma 3 writes an image as `\n\n<start_of_image>` + image tokens +
        # `<end_of_image>\n\n` in place of its `<start_of_image>`; LLaVA as image tokens in
        # place of its `<image>`.
        full = getattr(processor, "full_image_sequence", None)
        placeholder = getattr(processor, "boi_token", None) if full else processor.image_token
        if not isinstance(image_text, str) or not isinstance(placeholder, str):
            raise Refused(f"cannot tell how this {self.model_type} processor writes an image")
        if full:
            before = full[: full.index(image_text)]
            after = full[full.rindex(image_text) + len(image_text) :]
        else:
            before = after = ""
        positions = set()
        for width, height in ((64, 48), (300, 200)):
            out = processor(text=[placeholder], images=[self.blank(width, height)])
            ids = np.array(out["input_ids"]).reshape(-1).tolist()
            n = ids.count(self.image_id)
            expected = tok(before + image_text * n + after)["input_ids"]
            if n == 0 or ids != list(expected):
                raise Refused(
                    f"this {self.model_type} processor expands an image unlike {before + image_text + after!r}"
                )
            positions.add(n)
        if len(positions) != 1:
            raise Refused("this model's images take a number of positions that depends on the image")
        return positions.pop(), before, after

    def layout(self):
        import mlx_vlm

        return {
            "image_token_id": self.image_id,
            "image_token": self.processor.tokenizer.convert_ids_to_tokens(self.image_id),
            "positions": self.positions,
            "before": self.before,
            "after": self.after,
            "mlx_vlm": mlx_vlm.__version__,
        }

    @staticmethod
    def open(data):
        """The image in `data` (PNG, JPEG, GIF, WebP, ...) as RGB; Refused if Pillow can't."""
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except Exception as e:
            raise Refused(f"not an image Pillow can decode ({type(e).__name__}: {e})") from None

    def embed(self, image):
        """The image's input embeddings (1, positions, hidden), evaluated."""
        pv = self.processor.image_processor(images=[image])["pixel_values"]
        ids = mx.array([[self.image_id] * self.positions])
        emb = self.model.get_input_embeddings(ids, mx.array(np.asarray(pv)), mask=mx.ones_like(ids)).inputs_embeds
        mx.eval(emb)
        return emb


def load_vision(path, model_type):
    """A vision folder through mlx_vlm: (language model, config, Vision)."""
    if model_type not in VISION_TYPES:
        kinds = ", ".join(VISION_TYPES.values())
        raise Refused(
            f"{path} is a vision model of type {model_type!r}, which Pensieve's mlx engine does not "
            f"support (images of {kinds} models only)"
        )
    try:
        import mlx_vlm
        import PIL  # noqa: F401
    except ImportError as e:
        raise Refused(
            f"{path} is a vision model and needs mlx-vlm and Pillow ({e}); `pensieve setup mlx` installs them"
        ) from None
    model, processor = mlx_vlm.load(path)
    config = model_config(path) or {}
    return VisionLanguageModel(model), config, Vision(model, processor, model_type)


class Worker:
    def __init__(self):
        self.model = None
        self.vision = None

    def handle(self, op, body):
        """The ok body of one request; raises Refused (or anything) for an error."""
        if op == HELLO:
            return self.hello(Body(body))
        if self.model is None:
            raise Refused("HELLO first")
        handler = {
            START_SAMPLING: self.start_sampling,
            DECODE: self.decode,
            SAMPLE: self.sample,
            LOGPROBS: self.logprobs,
            TRUNCATE: self.truncate,
            RELEASE: self.release,
            SAVE: self.save,
            RESTORE: self.restore,
            SHARE: self.share,
            DECODE_MEDIA: self.decode_media,
        }.get(op)
        if handler is None:
            raise Refused(f"unknown op {op}")
        return handler(Body(body))

    def slot(self, seq):
        if seq >= len(self.slots):
            raise Refused(f"sequence {seq} out of range (0..{len(self.slots)})")
        return self.slots[seq]

    def hello(self, body):
        version = body.u32()
        if version != VERSION:
            raise Refused(f"protocol version {version} unsupported (this worker speaks {VERSION})")
        if self.model is not None:
            raise Refused("a model is loaded already")
        try:
            params = json.loads(body.rest())
            path, sequences, context = params["model"], params["sequences"], params["context"]
        except (ValueError, KeyError, TypeError) as e:
            raise Refused(f"HELLO parameters: {e!r}") from None
        if not isinstance(path, str) or not isinstance(sequences, int) or sequences < 1:
            raise Refused("HELLO needs a model path and at least one sequence")
        if not isinstance(context, int) or context < 1:
            raise Refused("HELLO needs a positive context")

        log.info("loading %s", path)
        folder_config = model_config(path)
        vision = None
        if folder_config is not None and "vision_config" in folder_config:
            model, config, vision = load_vision(path, folder_config.get("model_type"))
        else:
            model, _tokenizer, config = load(path, return_config=True)

        # One position through a scratch cache tells the logits' width and what a cached
        # position costs, whatever the architecture; it also warms the model up.
        probe = cache_lib.make_prompt_cache(model)
        logits = model(mx.array([[0]]), cache=probe)
        mx.eval(logits, [c.state for c in probe])

        self.model = model
        self.vocab = logits.shape[-1]
        self.context = context
        self.slots = [Slot() for _ in range(sequences)]
        self.layer_shapes = [(type(c).__name__, describe(c.state)) for c in probe]
        self.model_type = config.get("model_type", type(model).__module__.rsplit(".", 1)[-1])
        self.kept = {}
        self.vision = vision
        info = {
            "version": VERSION,
            "vocab_size": self.vocab,
            "can_truncate": all(trims_anywhere(c) for c in probe),
            "kv_bytes_per_token": sum(kv_bytes_per_token(c) for c in probe),
            "model_type": self.model_type,
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        }
        if vision is not None:
            info["vision"] = vision.layout()
        log.info("loaded: %s", info)
        return json.dumps(info).encode()

    def start_sampling(self, body):
        slot = self.slot(body.u32())
        try:
            params = json.loads(body.rest() or b"{}")
        except ValueError as e:
            raise Refused(f"sampling parameters: {e}") from None
        if not isinstance(params, dict):
            raise Refused("sampling parameters must be a JSON object")
        slot.sampler = Sampler(params, self.vocab)
        return b""

    def decode(self, body):
        n = body.u32()
        entries = np.frombuffer(body.take(n * ENTRY.itemsize), ENTRY)
        body.end()

        # Validate everything before anything is run: a refused batch changes nothing.
        groups = []
        for seq in np.unique(entries["seq"]):
            slot = self.slot(int(seq))
            idx = np.flatnonzero(entries["seq"] == seq)
            expected = slot.length + np.arange(idx.size)
            got = entries["pos"][idx]
            if not np.array_equal(got, expected):
                bad = int(np.flatnonzero(got != expected)[0])
                raise Refused(f"sequence {seq}: entry {idx[bad]} has position {got[bad]}, expected {expected[bad]}")
            if expected[-1] >= self.context:
                raise Refused(f"sequence {seq}: position {expected[-1]} beyond the context")
            groups.append((int(seq), slot, idx))
        tokens = entries["token"]
        if n and (tokens.min() < 0 or tokens.max() >= self.vocab):
            raise Refused(f"token outside the vocabulary (0..{self.vocab})")

        self.kept = {}
        try:
            flagged = self.run(groups, tokens, entries["logits"] != 0)
        except Exception as e:
            # Lazily updated caches may be half-written: those sequences start over.
            for _, slot, _ in groups:
                slot.clear()
            log.exception("decode failed")
            seqs = [seq for seq, _, _ in groups]
            raise Refused(f"decode failed ({e!r}); sequences {seqs} are now empty") from None
        for _, slot, idx in groups:
            slot.length += idx.size

        # Sample in batch order: one sequence's later entries see its earlier tokens.
        out = bytearray(struct.pack("<I", len(flagged)))
        for index in sorted(flagged):
            seq, logits = flagged[index]
            sampler = self.slots[seq].sampler
            if sampler is None:
                token = greedy(logits)
            else:
                token = sampler.pick(logits)
                sampler.accept(token)
            self.kept[index] = Kept(seq, int(entries["pos"][index]), logits, token, sampler)
            out += struct.pack("<Ii", index, token)
        return bytes(out)

    def run(self, groups, tokens, flags):
        """Run the model over each sequence's entries; {batch index: (seq, float32 logits)}."""
        pending = []
        for seq, slot, idx in groups:
            if slot.cache is None:
                slot.cache = cache_lib.make_prompt_cache(self.model)
            # Runs of unflagged entries go through without their logits ever being
            # evaluated (no vocabulary projection), and the last prompt token then runs on
            # its own, as in mlx_lm's generate_step.
            bounds = np.flatnonzero(np.diff(flags[idx])) + 1
            for run in np.split(idx, bounds):
                logits = self.model(mx.array(tokens[run])[None], cache=slot.cache)
                if flags[run[0]]:
                    pending.append((seq, run, logits[0].astype(mx.float32)))
        # One evaluation for the whole batch: the kept logits and every touched cache.
        mx.eval(
            [rows for _, _, rows in pending],
            [[c.state for c in slot.cache] for _, slot, _ in groups],
        )
        flagged = {}
        for seq, run, rows in pending:
            rows = np.array(rows)
            for j, index in enumerate(run):
                flagged[int(index)] = (seq, rows[j])
        return flagged

    def decode_media(self, body):
        """One image, whole, into `seq`'s cache at its end; no logits are kept."""
        seq, pos, n = body.u32(), body.u32(), body.u32()
        data = body.rest()
        slot = self.slot(seq)
        if self.vision is None:
            raise Refused("this model takes no images")
        # Refusals first: a refused image changes nothing.
        if n != self.vision.positions:
            raise Refused(f"an image takes {self.vision.positions} positions, not {n}")
        if pos != slot.length:
            raise Refused(f"sequence {seq}: image at position {pos}, expected {slot.length}")
        if pos + n > self.context:
            raise Refused(f"sequence {seq}: the image would end at {pos + n}, beyond the context ({self.context})")
        image = self.vision.open(data)
        try:
            emb = self.vision.embed(image)
        except Exception as e:
            log.exception("image embeddings failed")
            raise Refused(f"the vision tower failed on this image ({e!r})") from None
        if slot.cache is None:
            slot.cache = cache_lib.make_prompt_cache(self.model)
        try:
            self.model(None, cache=slot.cache, inputs_embeds=emb)
            mx.eval([c.state for c in slot.cache])
        except Exception as e:
            # Lazily updated caches may be half-written: the sequence starts over.
            slot.clear()
            log.exception("image decode failed")
            raise Refused(f"image decode failed ({e!r}); sequence {seq} is now empty") from None
        slot.length += n
        return b""

    def entry(self, index):
        kept = self.kept.get(index)
        if kept is None:
            raise Refused(f"entry {index} of the last batch kept no logits")
        return kept

    def sample(self, body):
        seq, index, words = body.u32(), body.u32(), body.u32()
        mask = np.frombuffer(body.take(words * 4), "<u4")
        body.end()
        slot = self.slot(seq)
        kept = self.entry(index)
        if kept.seq != seq:
            raise Refused(f"entry {index} belongs to sequence {kept.seq}, not {seq}")
        # Bit t % 32 of word t / 32 allows token t; tokens past the mask are forbidden.
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little").astype(bool)
        allowed = np.zeros(self.vocab, bool)
        allowed[: min(bits.size, self.vocab)] = bits[: self.vocab]
        if not allowed.any():
            raise Refused("the mask allows no token")
        sampler = slot.sampler
        if sampler is None:
            token = greedy(kept.logits, allowed)
        else:
            token = sampler.pick(kept.logits, allowed)
            # The penalties count the token finally used for this entry.
            if sampler is kept.sampler:
                sampler.forget(kept.token)
            sampler.accept(token)
        kept.token, kept.sampler = token, sampler
        return struct.pack("<i", token)

    def logprobs(self, body):
        index, token, top = body.u32(), body.i32(), body.u32()
        body.end()
        kept = self.entry(index)
        if not 0 <= token < self.vocab:
            raise Refused(f"token {token} outside the vocabulary (0..{self.vocab})")
        x = kept.logits.astype(np.float64)
        x -= x.max()
        lp = x - np.log(np.exp(x).sum())
        top = min(top, self.vocab)
        ids = np.argpartition(-lp, top - 1)[:top] if 0 < top < self.vocab else np.arange(top)
        # Most likely first; equal ones by token id.
        ids = ids[np.lexsort((ids, -lp[ids]))]
        pairs = np.empty(ids.size, TOP_ENTRY)
        pairs["token"], pairs["logprob"] = ids, lp[ids]
        return struct.pack("<fI", lp[token], ids.size) + pairs.tobytes()

    def truncate(self, body):
        seq, start = body.u32(), body.u32()
        slot = self.slot(seq)
        body.end()
        # Speculation checks drafted tokens in one DECODE, a token sampled after each, and
        # cuts the rejected ones off here: the tokens sampled after them were never used,
        # so the penalties stop counting them.
        for kept in self.kept.values():
            if kept.seq == seq and kept.pos >= start and kept.sampler is not None:
                kept.sampler.forget(kept.token)
                kept.sampler = None
        if start >= slot.length:
            return b"\x01"
        if start == 0:
            slot.clear()
            return b"\x01"
        if not all(can_cut_now(c) for c in slot.cache):
            return b"\x00"
        for c in slot.cache:
            c.trim(slot.length - start)
        slot.length = start
        return b"\x01"

    def release(self, body):
        slot = self.slot(body.u32())
        body.end()
        slot.clear()
        slot.sampler = None
        return b""

    def share(self, body):
        src, dst, length = self.slot(body.u32()), self.slot(body.u32()), body.u32()
        body.end()
        if length > src.length:
            raise Refused(f"cannot share {length} positions of a sequence of {src.length}")
        if length == 0:
            dst.clear()
            return b""
        if length < src.length and not all(can_cut_now(c) for c in src.cache):
            raise Refused(f"the cache cannot be cut back to {length}")
        cache = [prefix_copy(c, length, src.length) for c in src.cache]
        # Copied now rather than at the next decode that touches dst.
        mx.eval([c.state for c in cache])
        dst.cache, dst.length = cache, length
        return b""

    def save(self, body):
        slot = self.slot(body.u32())
        body.end()
        arrays = []

        def encode(tree):
            if isinstance(tree, mx.array):
                arrays.append(tree)
                return {"array": len(arrays) - 1}
            if isinstance(tree, (list, tuple)):
                return [encode(t) for t in tree]
            if tree is None or isinstance(tree, (bool, int, float, str)):
                return tree
            raise Refused(f"cannot snapshot a cache holding {type(tree).__name__}")

        layers = None
        if slot.cache is not None:
            layers = [encode(compact_state(c)) for c in slot.cache]
        mx.eval(arrays)
        blobs = [raw_bytes(a) for a in arrays]
        header = {
            "model_type": self.model_type,
            "vocab_size": self.vocab,
            "length": slot.length,
            "layers": layers,
            "arrays": [[str(a.dtype), list(a.shape), len(b)] for a, b in zip(arrays, blobs)],
        }
        head = json.dumps(header).encode()
        return b"".join([SNAPSHOT_MAGIC, struct.pack("<I", len(head)), head, *blobs])

    def restore(self, body):
        slot = self.slot(body.u32())
        blob = Body(body.rest())
        if blob.take(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
            raise Refused("not a snapshot of this worker")
        try:
            header = json.loads(blob.take(blob.u32()))
            length, layers = header["length"], header["layers"]
            same = (header["model_type"], header["vocab_size"]) == (self.model_type, self.vocab)
            arrays = []
            for dtype, shape, size in header["arrays"]:
                arrays.append(from_raw(blob.take(size), mx_dtype(dtype), shape))
        except (ValueError, KeyError, TypeError) as e:
            raise Refused(f"malformed snapshot: {e!r}") from None
        blob.end()
        if not same:
            raise Refused("the snapshot is of another model")

        def decode(tree):
            if isinstance(tree, dict):
                return arrays[tree["array"]]
            if isinstance(tree, list):
                return [decode(t) for t in tree]
            return tree

        cache = None
        if layers is not None:
            if len(layers) != len(self.layer_shapes):
                raise Refused("the snapshot's layers do not match this model")
            fresh = cache_lib.make_prompt_cache(self.model)
            cache = []
            for layer, state, (kind, shapes) in zip(fresh, layers, self.layer_shapes):
                state = decode(state)
                if type(layer).__name__ != kind or describe(state) != shapes:
                    raise Refused("the snapshot's cache shapes do not match this model")
                cache.append(type(layer).from_state(state))
        if not isinstance(length, int) or not 0 <= length <= self.context:
            raise Refused(f"snapshot length {length} out of range")
        if (cache is None) != (length == 0) or any(getattr(c, "offset", length) != length for c in cache or []):
            raise Refused("the snapshot's length does not match its cache")
        slot.cache, slot.length = cache, length
        return b""


def read_exact(stream, n):
    """n bytes, or None at end-of-file."""
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def main():
    requests = sys.stdin.buffer
    # stdout carries frames only: keep a private handle on it, then point file descriptor 1
    # and sys.stdout at stderr so that nothing printed (Python or native) can corrupt it.
    responses = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="mlx worker: %(message)s")

    worker = Worker()
    while True:
        head = read_exact(requests, 4)
        if head is None:
            return 0
        payload = read_exact(requests, struct.unpack("<I", head)[0])
        if payload is None:
            return 0
        op = payload[0] if payload else 0
        if op == SHUTDOWN:
            responses.write(struct.pack("<IB", 1, 0))
            responses.flush()
            return 0
        try:
            status, result = 0, worker.handle(op, payload[1:])
        except Refused as e:
            status, result = 1, str(e).encode()
        except Exception as e:
            log.exception("op %d failed", op)
            status, result = 1, f"{type(e).__name__}: {e}".encode()
        responses.write(struct.pack("<IB", 1 + len(result), status) + result)
        responses.flush()


if __name__ == "__main__":
    sys.exit(main())
