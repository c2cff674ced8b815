#!/usr/bin/env python3
"""Builds a tiny llama.cpp multimodal projector ("mmproj") GGUF with RANDOM weights.

None of the text-only test models has a vision tower, so this makes one for any of them:
a LLaVA-1.5 style projector (`clip.projector_type` "mlp") over a 2-block ViT of width 64,
its output width read from the text model so that llama.cpp's mtmd accepts the pair. An
image then goes through mtmd end to end (preprocessing, the CLIP graph, the embeddings fed
to the text model) and becomes (image_size / patch_size)^2 embeddings, 16 by default, with
no begin/end marker tokens around them (mtmd adds none for this projector type) and a
causal decode (mtmd asks non-causal attention only of gemma3/gemma4/deepseek4v projectors).

The weights are random (normal, fixed seed): the point is exercising the image path and
its caching, NEVER quality. What the text model "sees" is noise, the same noise for the
same image, seed and numpy version. The file is a few hundred KB (F16 matrices).

Usage:
  make-test-mmproj.py --model TEXT_MODEL.gguf --out OUT.gguf [--seed 0] [--image-size 64] [--patch-size 16]

Runs with the test venv's Python (scripts/setup-test-env.sh installs gguf and numpy).
"""

# What llama.cpp reads (vendored in llama-cpp-sys-2 0.1.161, llama.cpp/tools/mtmd/):
#
# - clip-impl.h names every key and tensor used here: KEY_PROJ_TYPE, KEY_HAS_VISION_ENC,
#   KEY_USE_GELU, the "clip.vision.*" KEY_N_EMBD / KEY_N_FF / KEY_N_BLOCK / KEY_PROJ_DIM /
#   KEY_N_HEAD / KEY_LAYER_NORM_EPS, KEY_IMAGE_SIZE, KEY_PATCH_SIZE, KEY_IMAGE_MEAN,
#   KEY_IMAGE_STD; and TN_PATCH_EMBD, TN_CLASS_EMBD, TN_POS_EMBD, TN_LN_PRE, TN_LN_1,
#   TN_LN_2, TN_ATTN_Q/K/V/OUTPUT, TN_FFN_UP, TN_FFN_DOWN, TN_LLAVA_PROJ ("mm.%d.%s").
#   The name "mlp" is PROJECTOR_TYPE_MLP in PROJECTOR_TYPE_NAMES.
# - clip.cpp, clip_model_loader: the constructor reads has_vision_encoder (absent means no
#   vision context at all). load_hparams throws on a missing u32/f32 key among the seven
#   above (the getters also assert the GGUF value type: u32, f32, bool, f32 arrays), reads
#   image_mean/image_std as optional but throws when either has fewer than 3 entries, and
#   without use_gelu/use_silu picks quick-GELU for the encoder FFN (CLIP's own; written
#   here as use_gelu = false). load_tensors marks all the vision tensors optional except
#   each block's attn_out and ffn_up/ffn_down weights, and for "mlp" loads mm.0-mm.4 and
#   v.image_newline as optional; it swaps ffn_up/ffn_down when ffn_down's ne[0] equals the
#   width (legacy files), so the FFN width here differs from the encoder width.
# - models/llava.cpp (clip_graph_llava) uses, unconditionally: v.patch_embd.weight (conv2d
#   kernel, ne [patch, patch, 3, width]), v.position_embd.weight (get_rows over n_patches
#   positions, plus one for v.class_embd when present, which it concatenates after the
#   patches; concat needs both F32), attn_q/k/v weights, mm.0 weight and bias; it uses
#   mm.2 when present and clip_n_mmproj_embd() reads the output width from mm.2's ne[1],
#   so mm.2 is required in practice. Biases, ln1/ln2, pre_ln, post_ln are optional;
#   post_ln is left out, as LLaVA-1.5 drops it. The encoder runs blocks 0..n_layer-2
#   (LLaVA takes the second-to-last layer), so of the 2 blocks only the first is computed;
#   the second is still loaded.
# - mtmd.cpp: "mlp" without image_grid_pinpoints uses the fixed-size preprocessor (every
#   image resized to image_size x image_size), sets no img_beg/img_end, and
#   clip_n_output_tokens() is (image_size / patch_size)^2 for it. mtmd_context throws when
#   clip_n_mmproj_embd() differs from the text model's n_embd (llama_model_n_embd_inp).
# - ggml's shapes are numpy's reversed: gguf-py writes a row-major (out, in) array as a
#   tensor with ne [in, out], which is what ggml_mul_mat(w, x) wants for w.

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

# The vision encoder. Head width 64 is the smallest that CUDA's flash attention takes, so
# clip's warmup keeps flash attention on every backend (it falls back, with a warning, for
# head widths it does not support).
VISION_WIDTH = 64
VISION_HEADS = 1
VISION_FFN = 128  # must differ from VISION_WIDTH, see the ffn swap above
VISION_BLOCKS = 2
# The projector's middle width: LLaVA-1.5 uses the text width there (Linear(vision, text),
# GELU, Linear(text, text)); a narrow one keeps the file small and the loader does not care.
PROJECTOR_HIDDEN = 64
LAYER_NORM_EPS = 1e-5
# CLIP's (OpenAI) normalisation, as LLaVA-1.5's mmproj carries it.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
INIT_STD = 0.02


def text_embedding_length(path: Path) -> tuple[str, int]:
    """The text model's architecture and `<arch>.embedding_length`."""
    reader = GGUFReader(path)
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise SystemExit(f"{path}: no general.architecture")
    arch = str(arch_field.contents())
    field = reader.fields.get(f"{arch}.embedding_length")
    if field is None:
        raise SystemExit(f"{path}: no {arch}.embedding_length")
    return arch, int(field.contents())


def build(out: Path, n_embd_text: int, seed: int, image_size: int, patch_size: int, dtype: str, source: str) -> None:
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size != 0:
        raise SystemExit(f"--image-size ({image_size}) must be a positive multiple of --patch-size ({patch_size})")
    if VISION_WIDTH % VISION_HEADS != 0:
        raise SystemExit("the vision width must be a multiple of the head count")
    n_patches = (image_size // patch_size) ** 2
    n_pos = n_patches + 1  # + the class embedding
    rng = np.random.default_rng(seed)
    matrix_type = np.float16 if dtype == "f16" else np.float32

    def matrix(*shape: int) -> np.ndarray:
        # Weight matrices (2-D and the 4-D conv kernel), in the file's weight type.
        return (rng.standard_normal(shape, dtype=np.float32) * INIT_STD).astype(matrix_type)

    def vector(n: int, around: float = 0.0) -> np.ndarray:
        # Biases, norms and the class embedding: always F32, as llama.cpp's converters write
        # 1-D tensors (and ggml_concat needs v.class_embd to match the F32 patch embeddings).
        return (around + rng.standard_normal(n, dtype=np.float32) * INIT_STD).astype(np.float32)

    writer = GGUFWriter(out, "clip")
    writer.add_string("general.name", f"pensieve-test-mmproj-{n_embd_text}")
    writer.add_string(
        "general.description",
        f"RANDOM-weight LLaVA-style mmproj for tests (seed {seed}, for {source}); its output means nothing",
    )
    writer.add_uint32("general.file_type", 1 if dtype == "f16" else 0)  # LLAMA_FTYPE_MOSTLY_F16 / ALL_F32

    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", False)  # quick-GELU in the encoder FFN, as CLIP

    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", VISION_WIDTH)
    writer.add_uint32("clip.vision.feed_forward_length", VISION_FFN)
    writer.add_uint32("clip.vision.block_count", VISION_BLOCKS)
    writer.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", LAYER_NORM_EPS)
    # Read but unused by the "mlp" graph; the projector's output width, as converters set it.
    writer.add_uint32("clip.vision.projection_dim", n_embd_text)
    writer.add_array("clip.vision.image_mean", [float(v) for v in IMAGE_MEAN])
    writer.add_array("clip.vision.image_std", [float(v) for v in IMAGE_STD])

    d = VISION_WIDTH
    # Shapes below are numpy's (row-major); ggml's ne is the reverse.
    writer.add_tensor("v.patch_embd.weight", matrix(d, 3, patch_size, patch_size))  # ne [p, p, 3, d]
    writer.add_tensor("v.class_embd", vector(d))  # ne [d]
    writer.add_tensor("v.position_embd.weight", matrix(n_pos, d))  # ne [d, n_patches + 1]
    writer.add_tensor("v.pre_ln.weight", vector(d, 1.0))
    writer.add_tensor("v.pre_ln.bias", vector(d))
    for il in range(VISION_BLOCKS):
        blk = f"v.blk.{il}"
        writer.add_tensor(f"{blk}.ln1.weight", vector(d, 1.0))
        writer.add_tensor(f"{blk}.ln1.bias", vector(d))
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{blk}.{name}.weight", matrix(d, d))  # ne [d, d]
            writer.add_tensor(f"{blk}.{name}.bias", vector(d))
        writer.add_tensor(f"{blk}.ln2.weight", vector(d, 1.0))
        writer.add_tensor(f"{blk}.ln2.bias", vector(d))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(VISION_FFN, d))  # ne [d, ffn]
        writer.add_tensor(f"{blk}.ffn_up.bias", vector(VISION_FFN))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(d, VISION_FFN))  # ne [ffn, d]
        writer.add_tensor(f"{blk}.ffn_down.bias", vector(d))
    # The projector: mm.0 (vision width -> hidden), GELU, mm.2 (hidden -> text width).
    writer.add_tensor("mm.0.weight", matrix(PROJECTOR_HIDDEN, d))  # ne [d, hidden]
    writer.add_tensor("mm.0.bias", vector(PROJECTOR_HIDDEN))
    writer.add_tensor("mm.2.weight", matrix(n_embd_text, PROJECTOR_HIDDEN))  # ne [hidden, n_embd_text]
    writer.add_tensor("mm.2.bias", vector(n_embd_text))

    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Build a tiny RANDOM-weight llama.cpp mmproj (LLaVA 'mlp' projector) for a text-only test model."
    )
    parser.add_argument("--model", required=True, type=Path, help="the text model GGUF (its n_embd sizes the output)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the mmproj GGUF")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=64, help="square input side in pixels (default 64)")
    parser.add_argument("--patch-size", type=int, default=16, help="patch side in pixels (default 16)")
    parser.add_argument(
        "--dtype", choices=("f16", "f32"), default="f16", help="type of the weight matrices (default f16)"
    )
    args = parser.parse_args()

    arch, n_embd_text = text_embedding_length(args.model)
    build(args.out, n_embd_text, args.seed, args.image_size, args.patch_size, args.dtype, args.model.name)
    n_tokens = (args.image_size // args.patch_size) ** 2
    print(
        f"{args.out}: mlp projector for {arch} (n_embd {n_embd_text}), "
        f"{args.image_size}px images -> {n_tokens} tokens, {args.out.stat().st_size} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
