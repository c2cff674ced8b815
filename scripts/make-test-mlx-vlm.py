"""Builds a tiny LLaVA model folder for the mlx engine's image tests, in the MLX layout that
mlx_vlm.load() reads: a CLIP vision tower and projector in front of a 2-layer llama text
model, with SmolLM2's tokenizer (and chat template) plus an `<image>` token.

Its weights are RANDOM (mlx_vlm's own initialisation, seeded): the model sees nothing and
says nothing sensible. It exists to exercise the image path end to end (decoding, the
processor's expansion, the tower, the projector, the image's positions in the KV cache, the
prefix cache), not the quality of what a model makes of an image.

    python scripts/make-test-mlx-vlm.py --tokenizer-from SMOLLM2_MLX_DIR --out OUT_DIR

Needs mlx, mlx-vlm and tokenizers (the mlx venv of `pensieve setup mlx`).
"""

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import AddedToken, Tokenizer

# 112 / 14 = 8 x 8 patches (the CLS position is dropped by the default strategy): 64
# positions an image.
IMAGE_SIZE, PATCH = 112, 14
IMAGE_TOKEN = "<image>"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer-from", required=True, type=Path, help="an MLX folder of SmolLM2")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    src, out = args.tokenizer_from, args.out
    out.mkdir(parents=True, exist_ok=True)

    # SmolLM2's tokenizer with <image> appended as a special token.
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    image_id = tok.token_to_id(IMAGE_TOKEN)
    vocab = tok.get_vocab_size()
    tok.save(str(out / "tokenizer.json"))
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["extra_special_tokens"] = {"image_token": IMAGE_TOKEN}
    tc["processor_class"] = "LlavaProcessor"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    shutil.copy(src / "special_tokens_map.json", out / "special_tokens_map.json")
    shutil.copy(src / "generation_config.json", out / "generation_config.json")

    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
        "eos_token_id": [2],
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "vocab_size": vocab,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "projection_dim": 32,
            "num_channels": 3,
            "layer_norm_eps": 1e-5,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))

    # CLIP's preprocessing: resize the shortest edge, centre crop, rescale, normalise.
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    processor = {
        "processor_class": "LlavaProcessor",
        "patch_size": PATCH,
        "vision_feature_select_strategy": "default",
        "image_token": IMAGE_TOKEN,
        "num_additional_image_tokens": 1,
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))

    # Random weights: mlx_vlm's module initialisation, under the names its loader expects.
    from mlx_vlm.models import llava
    from mlx_vlm.utils import update_module_configs

    mx.random.seed(0)
    mc = llava.ModelConfig.from_dict(dict(config))
    mc = update_module_configs(mc, llava, dict(config), ["text", "vision"])
    model = llava.Model(mc)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    print(f"{out}: random-weight LLaVA, {sum(v.size for v in weights.values())} parameters, image token {image_id}")


if __name__ == "__main__":
    main()
