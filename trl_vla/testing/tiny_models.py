"""Tiny, real OpenVLA and Llava-VLA checkpoints made offline, for tests, benchmarks and the CPU default of the
examples."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from ..action_tokenizer import identity_norm_stats, select_norm_stats
from ..models.openvla import OpenVLAConfig, OpenVLAForActionPrediction, OpenVLAImageProcessor, OpenVLAProcessor
from ..models.openvla.processing_openvla import PROMPT_TEMPLATE
from ..models.vlm_policy import VLMActionProcessor, VLMForActionPrediction
from .libero_instructions import LIBERO_INSTRUCTIONS


__all__ = ["make_tiny_openvla", "make_tiny_tokenizer", "make_tiny_vlm_policy", "tiny_llama_config"]

N_ACTION_BINS = 256
# SentencePiece's word-boundary marker: OpenVLA's prompts end with the token that is only this marker (29871).
WORD_BOUNDARY = "▁"


def tiny_llama_config(vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    """`text_config` of the 2-layer, 32-wide Llama that the parity fixtures (`tests/fixtures/make_*_parity_fixture.py`)
    were generated with."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "pad_token_id": pad_token_id,
    }


def make_tiny_tokenizer(vocab_size: int = 384, base_vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A Llama-style BPE tokenizer trained on OpenVLA prompts of the LIBERO instructions, followed by 256 action
    tokens and `<PAD>` (so that, as for OpenVLA, the action tokens are the last ids of the base vocabulary and the
    padding token is the first id after it). It adds `<s>` and pads on the left.

    `vocab_size` bounds the BPE vocabulary. `base_vocab_size` pads the vocabulary with unused tokens so that the
    action tokens end at that id (32000 for Llama-2's layout: actions 31744..31999, `<PAD>` 32000), for checkpoints
    with the released 7B shapes."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="first"),
            pre_tokenizers.Split(Regex(r"[?:.,\n]"), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[WORD_BOUNDARY],
        show_progress=False,
    )
    tokenizer.train_from_iterator([PROMPT_TEMPLATE.format(instruction=i) for i in LIBERO_INSTRUCTIONS], trainer)
    if base_vocab_size is not None:
        filler = base_vocab_size - N_ACTION_BINS - tokenizer.get_vocab_size()
        if filler < 0:
            raise ValueError(
                f"`base_vocab_size` {base_vocab_size} is smaller than the BPE vocabulary ({tokenizer.get_vocab_size()}) "
                f"plus the {N_ACTION_BINS} action tokens."
            )
        tokenizer.add_special_tokens([AddedToken(f"<unused_{i}>", special=True) for i in range(filler)])
    tokenizer.add_special_tokens([AddedToken(f"<ACTION_{i}>", special=True) for i in range(N_ACTION_BINS)])
    tokenizer.add_special_tokens([AddedToken("<PAD>", special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<PAD>",
        padding_side="left",
    )


def make_tiny_openvla(
    path: str | os.PathLike,
    decoding: str = "autoregressive",
    chunk_size: int = 1,
    action_dim: int = 7,
    image_size: int = 64,
    norm_stats: Mapping[str, Any] | None = None,
    unnorm_key: str = "libero",
    use_proprio: bool = False,
    proprio_dim: int = 8,
    num_images: int = 1,
    seed: int = 0,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    vision_dim: int = 64,
    vision_depth: int = 2,
    patch_size: int = 8,
) -> str:
    """Write a small but real OpenVLA checkpoint (config, safetensors weights, tokenizer, processor) to `path`.

    It has the released architecture at toy sizes: DINOv2-style (with registers and LayerScale) + SigLIP-style timm
    ViTs, the fused 3-layer projector and a Llama language model whose vocabulary is a BPE tokenizer trained here on
    LIBERO instructions plus the 256 action tokens at its tail. Nothing is downloaded. It loads with
    `OpenVLAForActionPrediction.from_pretrained(path)` / `OpenVLAProcessor.from_pretrained(path)` or the Auto classes.

    Args:
        path: Output directory.
        decoding: `"autoregressive"` (OpenVLA) or `"parallel"` (OpenVLA-OFT discrete).
        chunk_size: Actions per decision.
        action_dim: Dimensions of one action.
        image_size: Input resolution of the ViTs (the processor resizes camera images to it).
        norm_stats: `{unnorm_key: {"action": {...}, "proprio": {...}}}`; defaults to `identity_norm_stats`.
        unnorm_key: Key of the statistics the model un-normalises with.
        use_proprio: Add OFT's proprio token.
        proprio_dim: Size of the proprio vector.
        num_images: 1, or 2 to add a wrist camera.
        seed: Seed of the random initialisation.
        hidden_size: Width of the Llama model (4 attention heads, MLP twice as wide).
        num_hidden_layers: Depth of the Llama model.
        vision_dim: Width of each ViT.
        vision_depth: Blocks of each ViT (features come from the second-to-last one).
        patch_size: ViT patch size (`(image_size / patch_size) ** 2` tokens per image).

    Returns:
        `path`, as a string.
    """
    path = str(path)
    norm_stats = dict(norm_stats) if norm_stats is not None else {unnorm_key: identity_norm_stats(action_dim)}
    select_norm_stats(norm_stats, unnorm_key)  # fail now on a missing key, not at the first action
    tokenizer = make_tiny_tokenizer()
    base_vocab = len(tokenizer) - 1  # everything but <PAD>, which follows the action tokens
    pad_to_multiple_of = 64
    vit = {"embed_dim": vision_dim, "depth": vision_depth, "num_heads": 2, "patch_size": patch_size}
    config = OpenVLAConfig(
        timm_model_ids=["vit_large_patch14_reg4_dinov2", "vit_so400m_patch14_siglip_224"],
        image_sizes=[image_size, image_size],
        timm_override_act_layers=[None, None],
        # DINOv2's LayerScale starts at 1e-5 for a 300M-parameter ViT; a tiny one trained from scratch learns
        # faster from 0.1.
        timm_model_kwargs=[{**vit, "init_values": 0.1}, vit],
        text_config={
            "model_type": "llama",
            "vocab_size": base_vocab + pad_to_multiple_of,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 1024,
            # Llama's 0.02 suits 4096-wide models; at this width it leaves attention uniform and the policy blind
            # to where things are in the image for hundreds of steps. 1/sqrt(width) learns image positions fast.
            "initializer_range": hidden_size**-0.5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        pad_token_id=tokenizer.pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
        norm_stats=norm_stats,
        unnorm_key=unnorm_key,
        action_dim=action_dim,
        chunk_size=chunk_size,
        decoding=decoding,
        use_proprio=use_proprio,
        proprio_dim=proprio_dim,
        num_images=num_images,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OpenVLAForActionPrediction(config)
    model.save_pretrained(path)
    processor = OpenVLAProcessor(
        image_processor=OpenVLAImageProcessor(image_size=image_size),
        tokenizer=tokenizer,
        prompt_end_token_id=tokenizer.convert_tokens_to_ids(WORD_BOUNDARY),
        norm_stats=norm_stats,
        unnorm_key=unnorm_key,
    )
    processor.save_pretrained(path)
    return path


def make_tiny_vlm_policy(
    path: str | os.PathLike,
    action_dim: int = 7,
    chunk_size: int = 1,
    image_size: int = 32,
    norm_stats: Mapping[str, Any] | None = None,
    unnorm_key: str = "libero",
    seed: int = 0,
) -> str:
    """Write a tiny, randomly initialised Llava policy (model + `VLMActionProcessor`) to `path`; nothing downloads.

    The VLM is a real `LlavaForConditionalGeneration`: a 2-layer SigLIP vision tower (`image_size` pixels, 8-pixel
    patches, so `(image_size / 8) ** 2` image tokens), a 2-layer Llama language model and a SigLIP image processor. Its
    tokenizer is `make_tiny_openvla`'s (BPE trained on LIBERO prompts, then 256 action tokens, then `<PAD>`) plus an
    `<image>` token, so its action space equals that of a tiny OpenVLA with the same action settings: the two can be
    distilled into each other.

    Args:
        path: Output directory.
        action_dim: Dimensions of one action.
        chunk_size: Actions per decision.
        image_size: Input resolution (the processor resizes camera images to it); a multiple of 8.
        norm_stats: `{unnorm_key: {"action": {...}}}`; defaults to the identity on `[-1, 1]` (gripper unmasked).
        unnorm_key: Key of the statistics the model un-normalises with.
        seed: Seed of the random initialisation.

    Returns:
        `path`, as a string, for `VLMForActionPrediction.from_pretrained` and `VLMActionProcessor.from_pretrained`
        (or `AutoModelForImageTextToText` / `AutoProcessor`).
    """
    patch_size = 8
    if image_size % patch_size:
        raise ValueError(f"`image_size` must be a multiple of the patch size {patch_size}, got {image_size}.")
    norm_stats = dict(norm_stats) if norm_stats is not None else {unnorm_key: identity_norm_stats(action_dim)}
    tokenizer = make_tiny_tokenizer()
    action_vocab_size = len(tokenizer) - 1  # the action tokens end the base vocabulary; <PAD> follows them
    tokenizer.add_tokens([AddedToken("<image>", special=True)], special_tokens=True)
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        image_token="<image>",
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vlm_config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=processor.image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vlm = LlavaForConditionalGeneration(vlm_config)
    model = VLMForActionPrediction.from_vlm(
        vlm,
        action_dim=action_dim,
        chunk_size=chunk_size,
        n_bins=N_ACTION_BINS,
        action_vocab_size=action_vocab_size,
        norm_stats=norm_stats,
        unnorm_key=unnorm_key,
    )
    select_norm_stats(norm_stats, unnorm_key)  # fail now on a missing key, not at the first action
    model.save_pretrained(path)
    VLMActionProcessor(processor).save_pretrained(path)
    return str(path)
