#!/usr/bin/env python3
"""A Qwen2.5-7B-shaped MLX model folder with random weights and a real tokenizer: for speed, never
for quality (the mlx engine on mlx-cuda against mlx_lm.server, issue 18).

  tokenizer SRC.gguf OUT_DIR   (here) tokenizer.json and tokenizer_config.json (chat template
                               included) rebuilt from a Qwen2.5 GGUF's tokenizer metadata: byte-level
                               BPE with Qwen2's pre-tokenizer; needs `gguf` and `tokenizers`
  write TOK_DIR OUT_DIR        (on the GPU machine) Qwen2.5-7B's config with weights drawn by MLX,
                               quantized to 4 bits (group 64, as mlx_lm.convert -q does), saved
                               with the tokenizer files; needs mlx and mlx-lm
  write TOK_DIR OUT_DIR --tiny the same with two small layers, to check the script on a CPU

The vocabulary is padded to the model's 152,064 rows with [PAD] tokens, so every id the random
weights pick decodes to something on both servers.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

# Qwen2.5-7B-Instruct's config.json, less what mlx-lm ignores.
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

# Qwen2's pre-tokenizer split (llama.cpp's "qwen2" pre-tokenizer), as its tokenizer.json has it.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NORMAL, CONTROL = 1, 3


def field_strings(reader, name: str) -> list[str]:
    f = reader.fields[name]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_value(reader, name: str):
    f = reader.fields[name]
    v = f.parts[f.data[0]]
    return bytes(v).decode("utf-8") if f.types[0].name == "STRING" else v.tolist()[0]


def tokenizer(src: str, out: str) -> None:
    from gguf import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    r = GGUFReader(src)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    types = r.fields["tokenizer.ggml.token_type"]
    types = [int(types.parts[i][0]) for i in types.data]
    merges = [tuple(m.split(" ", 1)) for m in field_strings(r, "tokenizer.ggml.merges")]
    eos = tokens[field_value(r, "tokenizer.ggml.eos_token_id")]
    pad = tokens[field_value(r, "tokenizer.ggml.padding_token_id")]
    template = field_value(r, "tokenizer.chat_template")

    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Added tokens keep their GGUF ids: they follow the BPE vocabulary in Qwen's order.
    extra = [(i, t) for i, t in enumerate(tokens) if types[i] != NORMAL]
    extra += [(i, f"[PAD{i}]") for i in range(len(tokens), QWEN25_7B["vocab_size"])]
    for n, (i, t) in enumerate(extra):
        if i != len(vocab) + n:
            sys.exit(f"added token {t!r} has id {i}, expected {len(vocab) + n}: ids would not match")
    tok.add_tokens(
        [AddedToken(t, special=types[i] == CONTROL if i < len(types) else True, normalized=False) for i, t in extra]
    )
    if tok.get_vocab_size() != QWEN25_7B["vocab_size"]:
        sys.exit(f"vocabulary of {tok.get_vocab_size()}, expected {QWEN25_7B['vocab_size']}")

    Path(out).mkdir(parents=True, exist_ok=True)
    tok.save(str(Path(out) / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": eos,
        "pad_token": pad,
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 32768,
        "chat_template": template,
    }
    (Path(out) / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    print(f"{out}: {tok.get_vocab_size()} tokens ({len(vocab)} BPE, {len(merges)} merges), eos {eos!r}")


def write(tok_dir: str, out: str, tiny: bool) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2
    from mlx_lm.utils import quantize_model, save_config, save_model

    t0 = time.time()
    config = dict(QWEN25_7B, **(TINY if tiny else {}))
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(f"random weights: {params / 1e9:.2f}B parameters in {time.time() - t0:.1f}s", flush=True)
    model, config = quantize_model(model, config, group_size=64, bits=4)
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    save_model(out_path, model, donate_model=True)
    save_config(config, out_path / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tok_dir) / name, out_path / name)
    size = sum(p.stat().st_size for p in out_path.iterdir())
    print(f"{out}: 4-bit, {size / 2**30:.2f} GiB, in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "tokenizer":
        tokenizer(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], "--tiny" in sys.argv[4:])
    else:
        sys.exit(__doc__)
