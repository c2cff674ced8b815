#!/usr/bin/env python3
"""Builds a tiny random-weight GGUF with gpt-oss's real tokenizer and chat template.

No test model has the Harmony vocabulary (gpt-oss-20b takes 13 GB), so this makes one that
has everything of gpt-oss the server sees except its network:

- the tokenizer: tiktoken's `o200k_harmony`, as the GGUF of gpt-oss carries it. The
  199,998 byte-level BPE tokens are `o200k_base`'s ranks, from the rank file that the
  `tiktoken-rs` crate ships (fetched with cargo from the crate registry, its sha256 checked
  against the one tiktoken and openai/harmony pin); the merges are recovered from the
  ranks (each token splits into the two tokens that BPE over lower ranks makes of it);
  then the special tokens of gpt-oss's tokenizer_config.json, 199998 `<|startoftext|>`
  to 200018 `<|endofprompt|>` (the Harmony markers among them: `<|return|>` 200002,
  `<|constrain|>` 200003, `<|channel|>` 200005, `<|start|>` 200006, `<|end|>` 200007,
  `<|message|>` 200008, `<|call|>` 200012), typed as control tokens, and padding up to
  gpt-oss's vocabulary of 201,088 as llama.cpp's converter pads it (`[PAD{i}]`, unused).
  The pre-tokenizer is llama.cpp's `gpt-4o` (o200k's split pattern); BOS `<|startoftext|>`,
  EOS `<|return|>`, padding `<|endoftext|>`, as gpt-oss's tokenizer_config.json has them.
  llama.cpp itself makes `<|return|>` and `<|call|>` end generation and not `<|end|>`.
- the chat template: gpt-oss's own, the engine's template fixture, byte for byte.
- the network: a 2-layer llama of width 64 (not gpt-oss's mixture of experts, which the
  tokenizer and template do not see) with normal random weights of a fixed seed, so that
  the file is the same on every machine. Its output means nothing; only a grammar makes
  it valid, which is what the tests using it check.

The model is written to $PENSIEVE_TEST_MODELS (default ~/.cache/pensieve/test-models) as
harmony-tiny-random.gguf, and rebuilt only when missing or made by another version of
this script. It takes seconds, most of them the merges.

Usage:
  make-harmony-test-model.py               build the model unless it is there
  make-harmony-test-model.py --goldens F   write tiktoken's own o200k_harmony token ids of
                                           the tokenizer test strings to F (needs tiktoken)

Runs with the test venv's Python (scripts/setup-test-env.sh installs gguf and numpy).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "crates/pensieve-engine/src/template/fixtures/gpt-oss.jinja"
# The tokenizer test strings; their tiktoken ids sit beside them (--goldens).
GOLDENS = ROOT / "crates/pensieve-llama/tests/fixtures/o200k_harmony.json"

MODEL_FILE = "harmony-tiny-random.gguf"
# Bumped whenever what this script writes changes: a model of another build is rebuilt.
BUILD = "1"

# o200k_base's rank file, as the tiktoken-rs crate ships it; the hash tiktoken and
# openai/harmony check it against.
TIKTOKEN_RS = "0.12.1"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_RANKS = 199_998

# gpt-oss's added tokens (tokenizer_config.json `added_tokens_decoder`; tiktoken's
# o200k_harmony has the same ids).
SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200000: "<|reserved_200000|>",
    200001: "<|reserved_200001|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200004: "<|reserved_200004|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200009: "<|reserved_200009|>",
    200010: "<|reserved_200010|>",
    200011: "<|reserved_200011|>",
    200012: "<|call|>",
    200013: "<|reserved_200013|>",
    200014: "<|reserved_200014|>",
    200015: "<|reserved_200015|>",
    200016: "<|reserved_200016|>",
    200017: "<|reserved_200017|>",
    200018: "<|endofprompt|>",
}
VOCAB = 201_088  # gpt-oss's config.json vocab_size
BOS, EOS, PAD = 199998, 200002, 199999

# The network: small enough to build and run in seconds, a real llama all the same.
LAYERS, WIDTH, HEADS, KV_HEADS, FFN = 2, 64, 4, 2, 128
CONTEXT = 32768
SEED = 20260801


def log(msg: str) -> None:
    print(f"[make-harmony-test-model] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path.home() / ".cache" / "pensieve"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rank_file() -> Path:
    """o200k_base.tiktoken, from the tiktoken-rs crate (fetched once with cargo)."""
    dest = cache_dir() / "tiktoken" / "o200k_base.tiktoken"
    if dest.is_file() and sha256(dest) == O200K_SHA256:
        return dest
    # A throwaway package that depends on the crate: `cargo metadata` downloads and
    # unpacks it (cargo checks the archive against the registry's checksum) and says
    # where it is.
    project = cache_dir() / "tiktoken-rs-fetch"
    (project / "src").mkdir(parents=True, exist_ok=True)
    (project / "src" / "lib.rs").write_text("")
    (project / "Cargo.toml").write_text(
        '[package]\nname = "o200k-fetch"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
        f'[dependencies]\ntiktoken-rs = "={TIKTOKEN_RS}"\n\n[workspace]\n'
    )
    log(f"fetching tiktoken-rs {TIKTOKEN_RS} for o200k_base.tiktoken")
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(project / "Cargo.toml")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    manifest = next(
        p["manifest_path"]
        for p in json.loads(out)["packages"]
        if p["name"] == "tiktoken-rs" and p["version"] == TIKTOKEN_RS
    )
    source = Path(manifest).parent / "assets" / "o200k_base.tiktoken"
    got = sha256(source)
    if got != O200K_SHA256:
        sys.exit(f"{source}: sha256 {got}, expected {O200K_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return dest


def load_ranks(path: Path) -> list[bytes]:
    """The BPE tokens, by rank."""
    by_rank: dict[int, bytes] = {}
    for line in path.read_bytes().splitlines():
        token, rank = line.split()
        by_rank[int(rank)] = base64.b64decode(token)
    if sorted(by_rank) != list(range(O200K_RANKS)):
        sys.exit(f"{path}: the ranks are not 0..{O200K_RANKS - 1}")
    return [by_rank[r] for r in range(O200K_RANKS)]


def recover_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each token of two or more bytes, in rank order: BPE over the
    ranks below the token's own, as tiktoken would run it on the token's bytes, leaves
    exactly two parts. Ranked by the token it makes, the merges then apply in the order
    tiktoken's lowest-rank-first BPE applies them."""
    ranks = {t: r for r, t in enumerate(tokens)}
    merges = []
    for rank, token in enumerate(tokens):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            sys.exit(f"token {rank} {token!r} is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def byte_encoder() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (as the `gpt2`
    tokenizer model of GGUF stores tokens and merges)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def build(out: Path) -> None:
    import gguf
    import numpy as np

    started = time.monotonic()
    tokens = load_ranks(rank_file())
    merges = recover_merges(tokens)
    log(f"{len(merges)} merges recovered in {time.monotonic() - started:.1f}s")
    enc = byte_encoder()

    def as_text(token: bytes) -> str:
        return "".join(enc[b] for b in token)

    names = [as_text(t) for t in tokens]
    types = [gguf.TokenType.NORMAL] * len(names)
    for i in range(O200K_RANKS, VOCAB):
        names.append(SPECIALS.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in SPECIALS else gguf.TokenType.UNUSED)

    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name("harmony-tiny-random (gpt-oss tokenizer and template, random weights)")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(WIDTH // HEADS)
    w.add_rope_freq_base(150000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges([f"{as_text(a)} {as_text(b)}" for a, b in merges])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)
    w.add_chat_template(TEMPLATE.read_text())

    rng = np.random.default_rng(SEED)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    head = WIDTH // HEADS
    # The output projection is the embedding's (tied), as llama.cpp allows.
    w.add_tensor("token_embd.weight", weight(VOCAB, WIDTH))
    w.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(HEADS * head, WIDTH))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(KV_HEADS * head, WIDTH))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(KV_HEADS * head, WIDTH))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(WIDTH, HEADS * head))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(FFN, WIDTH))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(FFN, WIDTH))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(WIDTH, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    stamp(out).write_text(f"{BUILD} {sha256(out)}")
    log(f"{out} built in {time.monotonic() - started:.1f}s ({out.stat().st_size} bytes)")


def stamp(model: Path) -> Path:
    """Beside the model: the build that made it and its sha256."""
    return model.with_name(f".{model.name}.build")


def built_by_this_version(model: Path) -> bool:
    try:
        return model.is_file() and stamp(model).read_text() == f"{BUILD} {sha256(model)}"
    except OSError:
        return False


def goldens(path: Path) -> None:
    """tiktoken's own token ids of the test strings, the oracle the tokenizer test checks
    llama.cpp's reading of the GGUF against."""
    try:
        import tiktoken
    except ImportError:
        sys.exit("--goldens needs OpenAI's tiktoken: pip install tiktoken==0.14.0")

    # tiktoken looks for its download by the hash of its address: give it the crate's
    # copy there, and it checks the file's sha256 itself.
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    cache = cache_dir() / "tiktoken-cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rank_file(), cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    enc = tiktoken.get_encoding("o200k_harmony")
    data = json.loads(path.read_text())
    data["tiktoken"] = tiktoken.__version__
    for case in data["cases"]:
        case["ids"] = enc.encode(case["text"], allowed_special="all")
    # One case a line, so that a change shows as the strings it touches.
    cases = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in data["cases"])
    head = json.dumps({k: v for k, v in data.items() if k != "cases"}, ensure_ascii=False, indent=1)
    path.write_text(f'{head[:-2]},\n "cases": [\n{cases}\n ]\n}}\n')
    log(f"{path}: {len(data['cases'])} strings, tiktoken {tiktoken.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--goldens",
        type=Path,
        nargs="?",
        const=GOLDENS,
        help="write tiktoken's ids of the test strings (default: the test fixture)",
    )
    args = parser.parse_args()
    if args.goldens:
        goldens(args.goldens)
        return 0
    models = Path(os.environ.get("PENSIEVE_TEST_MODELS") or cache_dir() / "test-models")
    models.mkdir(parents=True, exist_ok=True)
    out = models / MODEL_FILE
    if built_by_this_version(out):
        log(f"{out}: ok")
        return 0
    build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
