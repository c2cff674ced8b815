#!/usr/bin/env python3
"""A Qwen2.5-7B-shaped GGUF with random weights and a real tokenizer: for speed, never for quality.

Speed depends on shapes and tensor types, not on the weights' values, so a random-weight model
measures a 7B model's speed honestly on a machine that reaches no model hub. Its output is
nonsense.

  meta SRC.gguf OUT.json.xz   (here) every key of a Qwen2.5 GGUF (tokenizer and chat template
                              included) with the qwen2.* hyperparameters set to Qwen2.5-7B's
  write META.json.xz OUT.gguf (on the GPU machine) an F16 GGUF of those shapes, weights
                              N(0, 0.02) drawn with torch on the GPU; llama-quantize then makes
                              Q4_K_M of it (scripts/gpu/pipeline.sh)

Needs gguf-py (llama.cpp's `gguf-py` folder on PYTHONPATH) and numpy.
"""

from __future__ import annotations

import json
import lzma
import sys
import time

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

# Qwen2.5-7B's config.json, in GGUF keys.
QWEN25_7B = {
    "qwen2.block_count": 28,
    "qwen2.context_length": 32768,
    "qwen2.embedding_length": 3584,
    "qwen2.feed_forward_length": 18944,
    "qwen2.attention.head_count": 28,
    "qwen2.attention.head_count_kv": 4,
    "qwen2.rope.freq_base": 1000000.0,
    "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
    "general.file_type": 1,  # F16; llama-quantize rewrites it
    "general.name": "Qwen2.5-7B-shaped random weights (Pensieve speed tests)",
    "general.size_label": "7B",
    "general.basename": "Qwen2.5-random",
}


def meta(src: str, dst: str) -> None:
    reader = GGUFReader(src)
    out, seen = [], set()
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.finetune":
            continue
        kind = field.types[0]
        entry = {"key": name, "type": kind.name, "value": field.contents()}
        if kind == GGUFValueType.ARRAY:
            entry["subtype"] = field.types[1].name
        if name in QWEN25_7B:
            entry["value"] = QWEN25_7B[name]
            seen.add(name)
        out.append(entry)
    missing = set(QWEN25_7B) - seen
    if missing:
        sys.exit(f"{src} lacks {sorted(missing)}: not a qwen2 GGUF?")
    with lzma.open(dst, "wt") as f:
        json.dump(out, f)
    print(f"{len(out)} keys -> {dst}")


def tensors(n_vocab: int, n_embd: int, n_layer: int, n_ff: int, n_kv: int) -> list[tuple]:
    """(name, numpy shape (ne1, ne0), dtype, fill) of a qwen2 model, as llama.cpp loads it."""
    f16, f32 = np.float16, np.float32
    out = [("token_embd.weight", (n_vocab, n_embd), f16, "random")]
    for i in range(n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (n_embd,), f32, "ones"),
            (p + "attn_q.weight", (n_embd, n_embd), f16, "random"),
            (p + "attn_q.bias", (n_embd,), f32, "random"),
            (p + "attn_k.weight", (n_kv, n_embd), f16, "random"),
            (p + "attn_k.bias", (n_kv,), f32, "random"),
            (p + "attn_v.weight", (n_kv, n_embd), f16, "random"),
            (p + "attn_v.bias", (n_kv,), f32, "random"),
            (p + "attn_output.weight", (n_embd, n_embd), f16, "random"),
            (p + "ffn_norm.weight", (n_embd,), f32, "ones"),
            (p + "ffn_gate.weight", (n_ff, n_embd), f16, "random"),
            (p + "ffn_up.weight", (n_ff, n_embd), f16, "random"),
            (p + "ffn_down.weight", (n_embd, n_ff), f16, "random"),
        ]
    out += [
        ("output_norm.weight", (n_embd,), f32, "ones"),
        ("output.weight", (n_vocab, n_embd), f16, "random"),
    ]
    return out


def random_source():
    """Draws on the GPU when torch sees one (15 GB in seconds), else numpy (slow; tiny shapes)."""
    try:
        import torch

        if torch.cuda.is_available():
            gen = torch.Generator(device="cuda").manual_seed(1234)

            def draw(shape, dtype):
                t = torch.float16 if dtype == np.float16 else torch.float32
                return (torch.randn(shape, generator=gen, device="cuda", dtype=t) * 0.02).cpu().numpy()

            return "torch cuda", draw
    except ImportError:
        pass
    rng = np.random.default_rng(1234)
    return "numpy", lambda shape, dtype: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)


def write(meta_path: str, out_path: str) -> None:
    with lzma.open(meta_path, "rt") as f:
        kv = json.load(f)
    by_key = {e["key"]: e for e in kv}

    def hp(k):
        return by_key["qwen2." + k]["value"]

    n_embd, n_head = hp("embedding_length"), hp("attention.head_count")
    n_kv = hp("attention.head_count_kv") * (n_embd // n_head)
    n_vocab = len(by_key["tokenizer.ggml.tokens"]["value"])
    specs = tensors(n_vocab, n_embd, hp("block_count"), hp("feed_forward_length"), n_kv)

    writer = GGUFWriter(out_path, "qwen2")
    for e in kv:
        if e["key"] == "general.architecture":
            continue  # the writer adds it
        kind = GGUFValueType[e["type"]]
        sub = GGUFValueType[e["subtype"]] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(e["key"], e["value"], kind, sub_type=sub)
    params = 0
    for name, shape, dtype, _ in specs:
        count = int(np.prod(shape))
        params += count
        writer.add_tensor_info(name, shape, np.dtype(dtype), count * np.dtype(dtype).itemsize)
    source, draw = random_source()
    print(
        f"{len(specs)} tensors, {params / 1e9:.3f} B parameters, random source {source}",
        flush=True,
    )
    t0 = time.time()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, shape, dtype, fill in specs:
        writer.write_tensor_data(np.ones(shape, dtype=dtype) if fill == "ones" else draw(shape, dtype))
    writer.close()
    print(f"wrote {out_path} in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("meta", "write"):
        sys.exit(__doc__)
    (meta if sys.argv[1] == "meta" else write)(sys.argv[2], sys.argv[3])
