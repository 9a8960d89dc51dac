"""Tiny checkpoints in the file layout of the released OpenVLA checkpoints, for loading tests.

`openvla/openvla-7b` (and the OpenVLA-OFT checkpoints fine-tuned from it, such as the ones SimpleVLA-RL trains from)
ship as a Hugging Face folder written by transformers 4.40 with remote code: a `config.json` whose `auto_map` points
to `configuration_prismatic.OpenVLAConfig` / `modeling_prismatic.OpenVLAForActionPrediction`, sharded safetensors, a
`preprocessor_config.json` of `PrismaticImageProcessor` (with its `tvf_*` parameters), a `processor_config.json`
naming `PrismaticProcessor`, Llama-2 tokenizer files and, for fine-tuned checkpoints, `dataset_statistics.json`. The
OpenVLA-OFT checkpoints of moojink/openvla-oft add the modules trained outside the VLA as separate files,
`proprio_projector--<step>_checkpoint.pt` and `action_head--<step>_checkpoint.pt` (an L1-regression or diffusion
head), which `experiments/robot/openvla_utils.py` loads with `find_checkpoint_file`.

`make_released_openvla` writes such a folder with the tiny weights of `make_tiny_openvla` and the released file
names. The remote-code files are placeholders that raise when imported: nothing may run them. What differs from a
released checkpoint: the sizes (and `timm_model_kwargs`, the one config field the tiny ViTs need), the tiny BPE
vocabulary of `make_tiny_tokenizer` instead of Llama-2's (so no SentencePiece `tokenizer.model`, and "▁" is not id
29871), and no `README.md`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..action_tokenizer import identity_norm_stats
from ..models.openvla import OpenVLAConfig, OpenVLAForActionPrediction
from .tiny_models import make_tiny_openvla


__all__ = ["make_released_openvla"]

REMOTE_CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
# The remote-code placeholders: importing one means something ran the checkpoint's code.
REMOTE_CODE_PLACEHOLDER = 'raise RuntimeError("This test checkpoint\'s remote code must not run.")\n'
# Native-only fields, absent from released `config.json` files (OFT settings come as `from_pretrained` kwargs).
NATIVE_ONLY_FIELDS = (
    "action_dim",
    "chunk_size",
    "decoding",
    "first_action_token_id",
    "num_images",
    "proprio_dim",
    "stop_token_id",
    "unnorm_key",
    "use_proprio",
    "dtype",
)
# `PrismaticImageProcessor`'s normalisation as released: ImageNet's DINOv2 statistics rounded through bfloat16.
RELEASED_DINO_MEAN, RELEASED_DINO_STD = [0.484375, 0.455078125, 0.40625], [0.228515625, 0.2236328125, 0.224609375]
SIGLIP = [0.5, 0.5, 0.5]


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_released_openvla(
    path: str | os.PathLike,
    norm_stats: Mapping[str, Any] | None = None,
    stats_in_config: bool = True,
    dataset_statistics: bool = True,
    proprio_projector: bool = False,
    action_head: bool = False,
    step: int = 150000,
    image_size: int = 32,
    seed: int = 0,
) -> str:
    """Write a tiny OpenVLA checkpoint in the released layout to `path`.

    Args:
        path: Output directory.
        norm_stats: `{unnorm_key: {"action": ...}}`; defaults to the identity on `[-1, 1]` under "libero_10_no_noops".
        stats_in_config: Put `norm_stats` in `config.json` (as openvla-7b does); `False` leaves them only in
            `dataset_statistics.json` (as checkpoints whose loaders read that file).
        dataset_statistics: Write `dataset_statistics.json` (the fine-tuned checkpoints' statistics).
        proprio_projector: Add OpenVLA-OFT's `proprio_projector--<step>_checkpoint.pt` (keys `module.fc1.weight` ...,
            as saved from DDP), for an 8-dim LIBERO proprio state.
        action_head: Add OpenVLA-OFT's `action_head--<step>_checkpoint.pt`, an L1-regression head (MLPResNet keys).
        step: Training step in the names of the extra module files.
        image_size: Input resolution of the tiny ViTs.
        seed: Seed of the tiny weights.

    Returns:
        `path`, as a string.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    norm_stats = dict(norm_stats) if norm_stats is not None else {"libero_10_no_noops": identity_norm_stats()}
    unnorm_key = next(iter(norm_stats))
    with tempfile.TemporaryDirectory() as native:
        make_tiny_openvla(
            native,
            image_size=image_size,
            norm_stats=norm_stats,
            unnorm_key=unnorm_key,
            seed=seed,
            hidden_size=32,
            vision_dim=16,
        )
        config = json.loads((Path(native) / "config.json").read_text())
        tokenizer_config = json.loads((Path(native) / "tokenizer_config.json").read_text())
        (path / "tokenizer.json").write_text((Path(native) / "tokenizer.json").read_text())
        weights = load_file(Path(native) / "model.safetensors")
    hidden = config["text_config"]["hidden_size"]

    # Weights: bfloat16, sharded as `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`.
    model = OpenVLAForActionPrediction(OpenVLAConfig.from_dict(dict(config)))
    model.load_state_dict(weights, strict=True)
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="60KB")
    for name in ("config.json", "generation_config.json"):
        (path / name).unlink(missing_ok=True)

    released = {key: value for key, value in config.items() if key not in NATIVE_ONLY_FIELDS}
    released.update(
        {
            "architectures": ["OpenVLAForActionPrediction"],
            "auto_map": {
                "AutoConfig": "configuration_prismatic.OpenVLAConfig",
                "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
            },
            "hf_llm_id": "meta-llama/Llama-2-7b-hf",
            "output_projector_states": False,
            "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
            "torch_dtype": "bfloat16",
            "transformers_version": "4.40.1",
        }
    )
    released["text_config"] = {**config["text_config"], "torch_dtype": "bfloat16"}
    if stats_in_config:
        released["norm_stats"] = norm_stats
    else:
        released.pop("norm_stats", None)
    _write_json(path / "config.json", released)
    _write_json(
        path / "generation_config.json",
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": config["pad_token_id"]},
    )
    if dataset_statistics:
        _write_json(path / "dataset_statistics.json", norm_stats)

    sizes = [[3, image_size, image_size], [3, image_size, image_size]]
    _write_json(
        path / "preprocessor_config.json",
        {
            "auto_map": {
                "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                "AutoProcessor": "processing_prismatic.PrismaticProcessor",
            },
            "image_processor_type": "PrismaticImageProcessor",
            "image_resize_strategy": "resize-naive",
            "input_sizes": sizes,
            "interpolations": ["bicubic", "bicubic"],
            "means": [[0.485, 0.456, 0.406], SIGLIP],
            "processor_class": "PrismaticProcessor",
            "stds": [[0.229, 0.224, 0.225], SIGLIP],
            "tvf_crop_params": [{"output_size": [image_size, image_size]}] * 2,
            "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None,
            "tvf_normalize_params": [
                {"inplace": False, "mean": RELEASED_DINO_MEAN, "std": RELEASED_DINO_STD},
                {"inplace": False, "mean": SIGLIP, "std": SIGLIP},
            ],
            "tvf_resize_params": [
                {"antialias": True, "interpolation": 3, "max_size": None, "size": [image_size, image_size]}
            ]
            * 2,
            "use_fused_vision_backbone": True,
        },
    )
    _write_json(
        path / "processor_config.json",
        {
            "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
            "processor_class": "PrismaticProcessor",
        },
    )
    _write_json(
        path / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 2048,
            "pad_token": tokenizer_config["pad_token"],
            "padding_side": "right",
            "processor_class": "PrismaticProcessor",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    _write_json(
        path / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": tokenizer_config["pad_token"], "unk_token": "<unk>"},
    )
    for name in REMOTE_CODE_FILES:
        (path / name).write_text(REMOTE_CODE_PLACEHOLDER)

    generator = torch.Generator().manual_seed(seed)
    if proprio_projector:
        # openvla-oft `ProprioProjector(llm_dim, proprio_dim)`: fc1 (proprio -> llm), GELU, fc2; saved from DDP.
        shapes = {
            "fc1.weight": (hidden, 8),
            "fc1.bias": (hidden,),
            "fc2.weight": (hidden, hidden),
            "fc2.bias": (hidden,),
        }
        state = {f"module.{k}": torch.randn(s, generator=generator).bfloat16() for k, s in shapes.items()}
        torch.save(state, path / f"proprio_projector--{step}_checkpoint.pt")
    if action_head:
        # openvla-oft `L1RegressionActionHead`: an MLPResNet from the LLM width to the action dimension.
        shapes = {
            "model.layer_norm1.weight": (hidden * 7,),
            "model.layer_norm1.bias": (hidden * 7,),
            "model.fc1.weight": (hidden, hidden * 7),
            "model.fc1.bias": (hidden,),
            "model.mlp_resnet_blocks.0.ffn.0.weight": (hidden,),
            "model.mlp_resnet_blocks.0.ffn.0.bias": (hidden,),
            "model.mlp_resnet_blocks.0.ffn.1.weight": (hidden, hidden),
            "model.mlp_resnet_blocks.0.ffn.1.bias": (hidden,),
            "model.layer_norm2.weight": (hidden,),
            "model.layer_norm2.bias": (hidden,),
            "model.fc2.weight": (7, hidden),
            "model.fc2.bias": (7,),
        }
        state = {f"module.{k}": torch.randn(s, generator=generator).bfloat16() for k, s in shapes.items()}
        torch.save(state, path / f"action_head--{step}_checkpoint.pt")
    return str(path)
