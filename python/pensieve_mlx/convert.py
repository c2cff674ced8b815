"""Turn a GGUF file (llama or qwen2 architecture) into an MLX model folder that mlx_lm loads,
keeping the quantised weights quantised.

Why: the mlx engine's worker loads MLX model folders, and no model hub is reachable here: the
models we have are GGUF files. Dequantising everything to float would take 3-6x the size on
disk and in memory; this converter repacks llama.cpp's 32-element blocks as MLX affine
quantisation (w = scale * q + bias per group of 32) without changing a value:

- Q4_0 (w = d * (q - 8))  -> 4 bits, scale d, bias -8d
- Q4_1 (w = d * q + m)    -> 4 bits, scale d, bias m
- Q5_0 (w = d * (q - 16)) -> 5 bits, scale d, bias -16d
- Q5_1 (w = d * q + m)    -> 5 bits, scale d, bias m
- Q8_0 (w = d * q, q signed) -> 8 bits, q + 128, scale d, bias -128d

The GGUF scales are float16 and the biases above are float16 multiples of them by a power of two,
so float16 scales and biases (what mlx_lm models use) hold them exactly, and so does float32.
The default, --dtype auto, picks float16 where MLX has a GPU and float32 on a CPU-only build:
MLX's CPU kernels are about 40x slower in float16 (measured: 27 s vs 0.7 s for a 3-token
SmolLM2-135M forward). That dtype is also used for the F32/F16 tensors (norms); any other type
(K-quants, ...) is dequantised with gguf-py to it.

Also written: config.json (with the "quantization" section mlx_lm's loader reads, per-module
entries where bit widths differ), tokenizer.json (byte-level BPE rebuilt from the GGUF vocabulary
with the pre-tokenizer of `tokenizer.ggml.pre`), tokenizer_config.json (chat template, special
tokens), special_tokens_map.json and generation_config.json.

    PYTHONPATH=python python -m pensieve_mlx.convert MODEL.gguf OUT_DIR [--dtype auto|float16|float32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.quants import dequantize

GROUP = 32  # GGUF block size of the legacy quants = MLX group size
EXACT_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0)  # those MLX affine quantisation holds

# Pre-tokenizer splits for tokenizer.ggml.pre, applied in order before the byte-level mapping
# (the same splits llama.cpp's llama-vocab applies for each pre type).
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKENIZER_SPLITS = {
    "default": [GPT2_REGEX],
    "gpt-2": [GPT2_REGEX],
    # SmolLM: every digit on its own, then GPT-2
    "smollm": [r"\p{N}", GPT2_REGEX],
    "qwen2": [
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ],
    "llama-bpe": [
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ],
}

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# GGUF token types that are special (matched whole, never split): CONTROL and USER_DEFINED
SPECIAL_TOKEN_TYPES = (3, 4)


def field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def f32(x) -> float:
    """A GGUF float32 as the shortest decimal that reads back to it (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(x)))


def hf_name(name: str) -> str | None:
    """Hugging Face name of a GGUF tensor (None: not part of the HF model)."""
    fixed = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
        "output_norm.weight": "model.norm.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf Q/K row interleaving (its RoPE layout) on the leading
    axis; works the same on float rows and on packed rows / their scales and biases."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpack_blocks(data: np.ndarray, qtype: QT, cols: int):
    """Split the GGUF blocks of an EXACT_TYPES tensor into (q uint8 (rows, cols),
    scale f16, bias f16 (rows, cols/32), bits), with w = scale * q + bias; None if a bias
    overflows float16."""
    rows = data.shape[0]
    nb = cols // GROUP
    blk = data.reshape(rows, nb, -1)
    d = blk[..., 0:2].copy().view(np.float16)[..., 0]

    def nibbles(qs):  # element j < 16 in the low nibble of byte j, element j + 16 in its high one
        return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)

    def high_bits(qh):  # Q5: bit j of the little-endian u32 qh is bit 4 of element j
        h = qh.copy().view("<u4")
        return (((h >> np.arange(GROUP, dtype=np.uint32)) & 1) << 4).astype(np.uint8)

    if qtype == QT.Q4_0:
        q, bits, bias = nibbles(blk[..., 2:18]), 4, d * np.float16(-8)
    elif qtype == QT.Q4_1:
        q, bits, bias = nibbles(blk[..., 4:20]), 4, blk[..., 2:4].copy().view(np.float16)[..., 0]
    elif qtype == QT.Q5_0:
        q, bits, bias = nibbles(blk[..., 6:22]) | high_bits(blk[..., 2:6]), 5, d * np.float16(-16)
    elif qtype == QT.Q5_1:
        q = nibbles(blk[..., 8:24]) | high_bits(blk[..., 4:8])
        bits, bias = 5, blk[..., 2:4].copy().view(np.float16)[..., 0]
    else:  # Q8_0
        q = (blk[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        bits, bias = 8, d * np.float16(-128)
    # d * -2^k is exact in float16 unless it overflows (|d| > 511 for Q8_0: not seen in practice)
    if not np.isfinite(bias).all():
        return None
    return q.reshape(rows, cols), d, bias, bits


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack (rows, cols) values as mx.quantize does: one little-endian bit stream per row, value i
    at bits [bits*i, bits*(i+1)), read as uint32 words (checked against mx.quantize for 4, 5, 8)."""
    rows, cols = q.shape
    eight = q.reshape(rows, cols // 8, 8)
    word = np.zeros((rows, cols // 8), np.uint64)
    for k in range(8):  # 8 values of `bits` bits fill exactly `bits` bytes
        word |= eight[..., k].astype(np.uint64) << np.uint64(bits * k)
    packed = word.astype("<u8").view(np.uint8).reshape(rows, cols // 8, 8)[..., :bits]
    return np.ascontiguousarray(packed).reshape(rows, -1).view("<u4")


def convert_weights(reader: GGUFReader, arch: str, dtype: str) -> tuple[dict, dict]:
    """HF-named MLX arrays, and {module path: bits} of the quantised modules."""
    import mlx.core as mx

    n_head = int(field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(field(reader, f"{arch}.attention.head_count_kv", n_head))
    mx_dtype = {"float16": mx.float16, "float32": mx.float32}[dtype]
    weights, qbits = {}, {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            print(f"skipping tensor {t.name}", file=sys.stderr)
            continue
        shape = [int(x) for x in reversed(t.shape.tolist())]  # (ne1, ne0) = HF (out, in)
        heads = None
        if arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = n_head if t.name.split(".")[-2] == "attn_q" else n_head_kv
        fix = (lambda a, h=heads: unpermute(a, h)) if heads else (lambda a: a)

        blocks = None
        if t.tensor_type in EXACT_TYPES and name.endswith(".weight") and len(shape) == 2:
            blocks = unpack_blocks(t.data, t.tensor_type, shape[1])
        if blocks is not None:
            q, scale, bias, bits = blocks
            prefix = name[: -len(".weight")]
            weights[name] = mx.array(fix(pack(q, bits)))
            weights[f"{prefix}.scales"] = mx.array(fix(scale)).astype(mx_dtype)
            weights[f"{prefix}.biases"] = mx.array(fix(bias)).astype(mx_dtype)
            qbits[prefix] = bits
            continue
        if t.tensor_type not in (QT.F32, QT.F16):
            print(f"{t.name}: {t.tensor_type.name} has no exact MLX form, dequantised to {dtype}", file=sys.stderr)
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        weights[name] = mx.array(fix(w)).astype(mx_dtype)
    return weights, qbits


def quantization_config(qbits: dict) -> dict | None:
    """mlx_lm's "quantization" section: the commonest bit width as the default, and an entry for
    each module that differs (its loader looks a module's path up here before the default)."""
    if not qbits:
        return None
    bits = Counter(qbits.values()).most_common(1)[0][0]
    cfg = {"group_size": GROUP, "bits": bits, "mode": "affine"}
    for path, b in sorted(qbits.items()):
        if b != bits:
            cfg[path] = {"group_size": GROUP, "bits": b, "mode": "affine"}
    return cfg


def build_config(reader: GGUFReader, arch: str, weights: dict, qbits: dict, dtype: str) -> dict:
    g = lambda k, d=None: field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_head = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(g("attention.head_count_kv", n_head)),
        "rms_norm_eps": f32(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": f32(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 4096)),
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "hidden_act": "silu",
        "torch_dtype": dtype,
    }
    if arch == "llama":
        cfg["head_dim"] = int(g("attention.key_length", hidden // n_head))
        cfg["attention_bias"] = False
        cfg["mlp_bias"] = False
    for key in ("bos_token_id", "eos_token_id"):
        if (v := field(reader, f"tokenizer.ggml.{key}")) is not None:
            cfg[key] = int(v)
    if (quant := quantization_config(qbits)) is not None:
        # mlx_lm writes both names; its loader reads "quantization"
        cfg["quantization"] = quant
        cfg["quantization_config"] = quant
    return cfg


def build_tokenizer(reader: GGUFReader, out: Path) -> int:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if (kind := field(reader, "tokenizer.ggml.model")) != "gpt2":
        raise SystemExit(f"tokenizer.ggml.model = {kind!r}: only byte-level BPE ('gpt2') is supported")
    tokens = [str(t) for t in field(reader, "tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    types = [int(x) for x in field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))]
    pre = str(field(reader, "tokenizer.ggml.pre", "default"))
    if pre not in PRETOKENIZER_SPLITS:
        print(f"tokenizer.ggml.pre = {pre!r} unknown: using GPT-2's pre-tokenizer", file=sys.stderr)

    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False, fuse_unk=False)
    )
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False)
            for r in PRETOKENIZER_SPLITS.get(pre, PRETOKENIZER_SPLITS["default"])
        ]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, ty in enumerate(types)
            if ty in SPECIAL_TOKEN_TYPES
        ]
    )

    def token(key):
        i = field(reader, f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(field(reader, "tokenizer.ggml.add_eos_token", False))
    # tokenizer.json alone must give the ids llama.cpp gives (the Rust side reads only it)
    if (add_bos and bos) or (add_eos and eos):
        head = [bos] if add_bos and bos else []
        tail = [eos] if add_eos and eos else []
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(head + ["$A"] + tail),
            pair=" ".join(head + ["$A", "$B"] + tail),
            special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(head + tail)],
        )
    tok.save(str(out / "tokenizer.json"))

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(field(reader, f"{field(reader, 'general.architecture')}.context_length", 32768)),
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": token("padding_token_id") or eos,
        "unk_token": token("unknown_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    if tmpl := field(reader, "tokenizer.chat_template"):
        cfg["chat_template"] = str(tmpl)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if cfg[k]},
            indent=2,
            ensure_ascii=False,
        )
    )
    return len(tokens)


def generation_config(reader: GGUFReader) -> dict:
    ids = lambda key: field(reader, f"tokenizer.ggml.{key}")  # noqa: E731
    eos = [int(i) for i in dict.fromkeys((ids("eos_token_id"), ids("eot_token_id"))) if i is not None]
    cfg = {"eos_token_id": eos[0] if len(eos) == 1 else eos}
    if ids("bos_token_id") is not None:
        cfg["bos_token_id"] = int(ids("bos_token_id"))
    return cfg


def convert(gguf_path: str | Path, out_dir: str | Path, dtype: str = "auto") -> Path:
    """Write the MLX folder for `gguf_path` into `out_dir`; `dtype` is that of the scales, biases
    and float tensors: "float16", "float32" (both hold the GGUF's float16 scales exactly) or
    "auto" (float16 with a Metal GPU, float32 on CPU-only MLX)."""
    import mlx.core as mx

    t0 = time.time()
    if dtype == "auto":
        dtype = "float16" if mx.metal.is_available() else "float32"
    reader = GGUFReader(str(gguf_path))
    arch = str(field(reader, "general.architecture"))
    if arch not in ("llama", "qwen2"):
        raise SystemExit(f"architecture {arch!r}: only llama and qwen2 are supported")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = build_tokenizer(reader, out)
    weights, qbits = convert_weights(reader, arch, dtype)
    cfg = build_config(reader, arch, weights, qbits, dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation_config(reader), indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    bits = ", ".join(f"{n} x {b}-bit" for b, n in sorted(Counter(qbits.values()).items()))
    print(
        f"wrote {out} ({arch}, {len(weights)} tensors, {n_vocab} tokens, quantised: {bits or 'none'}, "
        f"{dtype} scales/floats) in {time.time() - t0:.1f} s",
        file=sys.stderr,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "float32"],
        help="dtype of the scales, biases and float tensors (default auto: float16 "
        "with a Metal GPU, float32 on CPU-only MLX)",
    )
    args = ap.parse_args()
    convert(args.gguf, args.out, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
