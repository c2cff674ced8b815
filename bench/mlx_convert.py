#!/usr/bin/env python3
"""Turn a GGUF file (qwen2 or llama architecture) into an MLX model folder for mlx_lm.server.

Runs inside the mlx venv (scripts/setup-mlx-peer.sh): needs numpy, mlx, tokenizers and gguf (the
PyPI package from llama.cpp's gguf-py). No model hub: everything comes from the GGUF file.

- weights: every tensor dequantised with gguf-py (mx.load() reads GGUF itself but only keeps
  Q4_0/Q4_1/Q8_0; it fails on the K-quants of Qwen2.5-Coder-0.5B's Q4_K_M file), renamed to the
  Hugging Face names, saved as model.safetensors in --dtype (float16 default, or float32/bfloat16);
  llama's Q/K rows are un-permuted (llama.cpp's converter interleaves them for its RoPE layout);
- config.json from the GGUF metadata;
- tokenizer.json (byte-level BPE) rebuilt from tokenizer.ggml.tokens/merges/token_type, with the
  pre-tokenizer regex of the GGUF's `tokenizer.ggml.pre`, and tokenizer_config.json with the GGUF's
  chat template and special tokens.

Then `mlx_lm.convert --hf-path OUT --mlx-path OUT-4bit -q` makes an MLX-quantised copy if wanted.

    python bench/mlx_convert.py MODEL.gguf OUT_DIR [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

PRETOKENIZER_REGEX = {
    # Qwen2 (tokenizer.ggml.pre = "qwen2")
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # GPT-2 style (SmolLM2 "smollm", "gpt-2", ...)
    "default": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    # Llama 3 (tokenizer.ggml.pre = "llama-bpe")
    "llama-bpe": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def field_value(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def hf_name(name: str) -> str | None:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output.weight":
        return "lm_head.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf LlamaModel.permute for Q/K weights (and biases)."""
    shape = w.shape
    return (w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def build_config(reader: GGUFReader, arch: str, has_lm_head: bool, vocab_size: int) -> dict:
    g = lambda k, d=None: field_value(reader, f"{arch}.{k}", d)  # noqa: E731
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
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 4096)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": not has_lm_head,
        "hidden_act": "silu",
    }
    if arch == "llama":
        cfg["head_dim"] = int(g("attention.key_length", hidden // n_head))
        cfg["attention_bias"] = False
        cfg["mlp_bias"] = False
    return cfg


def convert_weights(reader: GGUFReader, arch: str, dtype: str) -> tuple[dict, bool]:
    import mlx.core as mx
    n_head = int(field_value(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(field_value(reader, f"{arch}.attention.head_count_kv", n_head))
    mx_dtype = {"float16": mx.float16, "float32": mx.float32, "bfloat16": mx.bfloat16}[dtype]
    out = {}
    has_lm_head = False
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            print(f"skipping tensor {t.name}", file=sys.stderr)
            continue
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        # gguf-py gives (rows, cols) = (ne1, ne0): HF Linear's (out, in) layout already
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())]) if w.ndim != len(t.shape) else w
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute(w, n_head)
        elif arch == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute(w, n_head_kv)
        has_lm_head |= name == "lm_head.weight"
        out[name] = mx.array(w).astype(mx_dtype)
    return out, has_lm_head


def build_tokenizer(reader: GGUFReader, out: Path) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import AddedToken
    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') is supported")
    tokens = [str(t) for t in field_value(reader, "tokenizer.ggml.tokens")]
    merges = [str(m) for m in field_value(reader, "tokenizer.ggml.merges")]
    types = [int(x) for x in field_value(reader, "tokenizer.ggml.token_type", [1] * len(tokens))]
    pre = str(field_value(reader, "tokenizer.ggml.pre", "default"))
    regex = PRETOKENIZER_REGEX.get(pre, PRETOKENIZER_REGEX["default"])
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     byte_fallback=False, fuse_unk=False)
    tok = Tokenizer(bpe)
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    special = [tokens[i] for i, ty in enumerate(types) if ty in (3, 4)]   # CONTROL, USER_DEFINED
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tok.save(str(out / "tokenizer.json"))

    def tok_at(key):
        i = field_value(reader, key)
        return tokens[int(i)] if i is not None and int(i) < len(tokens) else None

    eos = tok_at("tokenizer.ggml.eos_token_id")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "eos_token": eos,
        "pad_token": tok_at("tokenizer.ggml.padding_token_id") or eos,
        "bos_token": tok_at("tokenizer.ggml.bos_token_id") if field_value(
            reader, "tokenizer.ggml.add_bos_token", False) else None,
        "add_bos_token": bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    tmpl = field_value(reader, "tokenizer.chat_template")
    if tmpl:
        cfg["chat_template"] = str(tmpl)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: cfg[k] for k in ("eos_token", "pad_token", "bos_token") if cfg.get(k)}, indent=2))
    return len(tokens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    args = ap.parse_args()
    import mlx.core as mx
    t0 = time.time()
    reader = GGUFReader(args.gguf)
    arch = str(field_value(reader, "general.architecture"))
    if arch not in ("qwen2", "llama"):
        raise SystemExit(f"architecture {arch!r}: only qwen2 and llama are supported")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = build_tokenizer(reader, out)
    weights, has_lm_head = convert_weights(reader, arch, args.dtype)
    vocab_size = int(weights["model.embed_tokens.weight"].shape[0])
    cfg = build_config(reader, arch, has_lm_head, vocab_size)
    cfg["torch_dtype"] = args.dtype
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    if eos is not None:
        cfg["eos_token_id"] = int(eos)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    print(f"wrote {out} ({arch}, {len(weights)} tensors, {n_vocab} tokens, {args.dtype}) "
          f"in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
