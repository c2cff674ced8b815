"""Tests of pensieve_mlx.convert: GGUF -> MLX folder with the quantised weights kept quantised.

The model tests convert SmolLM2-135M-Instruct.Q4_1.gguf (llama; Q4_1 layers, Q8_0 token
embeddings tied to the output) once into pytest's temporary folder and compare against
llama.cpp's reading of the same file.

    PYTHONPATH=python /root/.cache/pensieve/peers/mlx-venv/bin/python -m pytest python/tests/test_convert.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python/, for pensieve_mlx

np = pytest.importorskip("numpy")
mx = pytest.importorskip("mlx.core", reason="mlx is not installed (use the mlx venv)")
pytest.importorskip("gguf", reason="gguf-py is not installed (use the mlx venv)")

from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402
from pensieve_mlx.convert import EXACT_TYPES, convert, hf_name, pack, unpack_blocks, unpermute  # noqa: E402

GGUF = Path(
    os.environ.get("PENSIEVE_TEST_GGUF", Path.home() / ".cache/pensieve/test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
)
needs_gguf = pytest.mark.skipif(not GGUF.exists(), reason=f"test model {GGUF} is missing")

# Fixture data recorded from llama.cpp's llama-server (same GGUF, `-t 1`):
# PROMPT_IDS from POST /tokenize {"content": PROMPT, "add_special": false, "parse_special": true};
# LLAMA_CPP_GREEDY from POST /completion {"prompt": PROMPT_IDS, "temperature": 0, "n_predict": 20,
# "return_tokens": true, "cache_prompt": false}, i.e. "The story of Romeo and Juliet by William
# Shakespeare is attributed to the 17th-century French".
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWho wrote Romeo and Juliet?<|im_end|>\n<|im_start|>assistant\n"
)
PROMPT_IDS = [
    1,
    9690,
    198,
    2683,
    359,
    253,
    5356,
    5646,
    11173,
    3365,
    3511,
    308,
    34519,
    28,
    7018,
    411,
    407,
    19712,
    8182,
    2,
    198,
    1,
    4093,
    198,
    10576,
    4150,
    30493,
    284,
    29117,
    47,
    2,
    198,
    1,
    520,
    9531,
    198,
]
LLAMA_CPP_GREEDY = [
    504,
    1977,
    282,
    30493,
    284,
    29117,
    411,
    4967,
    12081,
    314,
    10866,
    288,
    260,
    216,
    33,
    39,
    373,
    29,
    9051,
    3432,
]

# Recorded from llama-server POST /tokenize {"content": TEXT, "add_special": false,
# "parse_special": true} on the same GGUF.
TOKENIZER_CASES = [
    ("Hello, world!", [19556, 28, 905, 17]),
    ("The quick brown fox jumps over the lazy dog.", [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]),
    ("  leading spaces and trailing   ", [216, 2899, 5600, 284, 35079, 333]),
    (
        "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
        [
            1604,
            803,
            24,
            81,
            28,
            278,
            727,
            472,
            1003,
            253,
            1232,
            278,
            1116,
            198,
            3272,
            24,
            2104,
            24,
            33,
            28,
            216,
            34,
            1292,
            198,
        ],
    ),
    ("if (x) {\n\tfoo();\n}", [342, 365, 104, 25, 1662, 198, 197, 15236, 35040, 198, 109]),
    (
        "Year 2024: 3.14159 and 1,000,000 people; 42nd street",
        [
            19840,
            216,
            34,
            32,
            34,
            36,
            42,
            216,
            35,
            30,
            33,
            36,
            33,
            37,
            41,
            284,
            216,
            33,
            28,
            32,
            32,
            32,
            28,
            32,
            32,
            32,
            701,
            43,
            216,
            36,
            34,
            268,
            7280,
        ],
    ),
    (
        "don't, won't, I'm, they'll, we've, she'd, it's",
        [12420, 982, 28, 3763, 982, 28, 339, 5248, 28, 502, 3060, 28, 392, 3543, 28, 1041, 6737, 28, 357, 506],
    ),
    (
        "Ünïcödé: naïve café, Größe, Ελληνικά, Русский, 日本語のテキスト",
        [
            142,
            246,
            94,
            25972,
            83,
            7466,
            84,
            2756,
            42,
            15486,
            46494,
            37366,
            28,
            9171,
            7466,
            34878,
            85,
            28,
            5664,
            239,
            17162,
            17162,
            25723,
            11517,
            12001,
            21118,
            26112,
            28,
            5470,
            250,
            14714,
            9382,
            39511,
            7872,
            24958,
            28,
            17097,
            241,
            115,
            40993,
            179,
            120,
            248,
            26453,
            11100,
            224,
            10391,
            251,
            10391,
            134,
            11100,
            226,
        ],
    ),
    (
        "emoji 🙂🚀👍🏽 and 🇫🇷 flag",
        [
            391,
            33777,
            47526,
            10813,
            244,
            218,
            10813,
            235,
            231,
            10813,
            233,
            138,
            284,
            15107,
            225,
            121,
            10813,
            225,
            132,
            7048,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
        [1, 4093, 198, 1780, 314, 216, 34, 1232, 216, 34, 47, 2, 198, 1, 520, 9531, 198],
    ),
    ("<|endoftext|>text after end<|im_end|>", [0, 2692, 990, 1112, 2]),
    ("tabs\tand\nnew\r\nlines\n\n\n", [100, 7366, 197, 397, 198, 2241, 201, 198, 5110, 16506]),
    (
        "URL: https://example.com/path?q=1&r=two#frag",
        [14492, 42, 5141, 1742, 7434, 30, 824, 31, 1537, 47, 97, 45, 33, 22, 98, 45, 11355, 19, 28082],
    ),
    (
        "MixedCASE camelCase snake_case SCREAMING_CASE",
        [61, 13609, 51, 13108, 32782, 10802, 14321, 79, 7544, 15341, 48815, 4728, 79, 51, 13108],
    ),
    ("a\u00a0non-breaking space and \u200bzero width", [81, 15442, 9033, 29, 11194, 1898, 284, 459, 229, 13723, 8068]),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return convert(GGUF, tmp_path_factory.mktemp("mlx") / "smollm2")


@pytest.fixture(scope="module")
def reader() -> GGUFReader:
    return GGUFReader(str(GGUF))


def mx_dequantize_exact(w, scales, biases, bits):
    # float32 scales/biases make mx.dequantize compute in float32 as gguf-py does; with float16
    # ones it rounds d*q and then +m to float16 (same stored values, rounder arithmetic)
    return np.array(mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32), group_size=32, bits=bits))


@pytest.mark.parametrize("qtype", EXACT_TYPES, ids=lambda t: t.name)
def test_block_repacking_is_exact(qtype):
    """Every legacy block type (Q4_0 and Q5_1 appear in none of our test models) repacks exactly."""
    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    data = quantize(w, qtype)
    q, scale, bias, bits = unpack_blocks(data, qtype, 256)
    assert scale.dtype == bias.dtype == np.float16
    got = mx_dequantize_exact(mx.array(pack(q, bits)), mx.array(scale), mx.array(bias), bits)
    assert np.array_equal(got, dequantize(data, qtype))


def test_pack_matches_mx_quantize():
    """pack() lays bits out as mx.quantize does, for each bit width the converter writes."""
    w = mx.array(np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32))
    for bits in (4, 5, 8):
        wq, s, b = mx.quantize(w, group_size=32, bits=bits)
        deq = np.array(mx.dequantize(wq, s, b, group_size=32, bits=bits))
        q = np.rint((deq - np.repeat(np.array(b), 32, 1)) / np.repeat(np.array(s), 32, 1)).astype(np.uint8)
        assert np.array_equal(pack(q, bits), np.array(wq)), bits


@needs_gguf
def test_quantised_weights_dequantise_exactly(folder, reader):
    cfg = json.loads((folder / "config.json").read_text())
    weights = mx.load(str(folder / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    bits_seen = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        prefix = name.removesuffix(".weight")
        if t.tensor_type not in EXACT_TYPES:
            assert f"{prefix}.scales" not in weights, name
            continue
        bits = cfg["quantization"].get(prefix, cfg["quantization"])["bits"]
        bits_seen[prefix] = bits
        ref = dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            ref = unpermute(ref, n_head)
        elif t.name.endswith("attn_k.weight"):
            ref = unpermute(ref, n_kv)
        scales = weights[f"{prefix}.scales"]
        assert scales.dtype == getattr(mx, cfg["torch_dtype"])
        got = mx_dequantize_exact(weights[name], scales, weights[f"{prefix}.biases"], bits)
        assert np.array_equal(got, ref), name
    # SmolLM2 Q4_1: 30 layers x 7 Q4_1 matrices, and the Q8_0 token embedding
    assert bits_seen["model.embed_tokens"] == 8
    assert list(bits_seen.values()).count(4) == 210


@needs_gguf
def test_config_and_tokenizer_files(folder, reader):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (576, 9, 3)
    assert (cfg["rope_theta"], cfg["rms_norm_eps"], cfg["vocab_size"]) == (100000.0, 1e-05, 49152)
    assert cfg["quantization"]["group_size"] == 32 and cfg["quantization"]["bits"] == 4
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    assert (tok_cfg["eos_token"], tok_cfg["add_bos_token"]) == ("<|im_end|>", False)
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["bos_token_id"]) == (2, 1)


@needs_gguf
def test_mlx_lm_loads_and_decodes_like_llama_cpp(folder):
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (use the mlx venv)")
    import mlx.nn as nn
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tokenizer = load(str(folder))
    embed = model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and embed.bits == 8
    for layer in model.model.layers:
        for proj in (
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        ):
            assert isinstance(proj, nn.QuantizedLinear) and (proj.bits, proj.group_size) == (4, 32)

    messages = [{"role": "user", "content": "Who wrote Romeo and Juliet?"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == PROMPT
    assert tokenizer.encode(PROMPT, add_special_tokens=False) == PROMPT_IDS

    steps = generate_step(mx.array(PROMPT_IDS), model, sampler=lambda logits: mx.argmax(logits, axis=-1))
    out = [int(tok) for (tok, _), _ in zip(steps, range(len(LLAMA_CPP_GREEDY)))]
    text = tokenizer.decode(out)
    agreed = next((i for i, (a, b) in enumerate(zip(out, LLAMA_CPP_GREEDY)) if a != b), len(out))
    print(f"mlx greedy {text!r}: {agreed}/{len(out)} tokens agree with llama.cpp")
    # readable English: mostly ASCII letters and spaces, several words
    assert sum(c.isascii() and (c.isalpha() or c.isspace()) for c in text) > 0.8 * len(text)
    assert len(text.split()) >= 8
    assert agreed >= 8, (out, LLAMA_CPP_GREEDY)


@needs_gguf
def test_tokenizer_matches_llama_cpp(folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text, ids in TOKENIZER_CASES:
        assert tok.encode(text, add_special_tokens=False).ids == ids, text
        assert tok.encode(text).ids == ids, text  # GGUF says add_bos_token false: nothing added
        assert tok.decode(ids, skip_special_tokens=False) == text


@needs_gguf
def test_size_stays_quantised(folder):
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    # scales/biases as float32 (CPU-only MLX) cost a little over GGUF's float16; a float folder
    # would be ~5x (float32) or ~2.7x (float16)
    assert 0.9 * GGUF.stat().st_size < size < 1.3 * GGUF.stat().st_size, size
