"""OpenVLA (and OpenVLA-OFT's discrete parallel decoding) natively on transformers 5.

The architecture is Prismatic's: one or two timm ViTs whose second-to-last-block patch features are concatenated, an
MLP projector into the language model's embedding space, and a causal language model (Llama-2 for OpenVLA). Module
and parameter names follow the released `openvla/openvla-7b` checkpoint, so its weights load with `from_pretrained`.

Sequence layout (one row of a left-padded batch; `P` visual tokens, `A = action_dim * chunk_size` action tokens):

    [pad ... pad] <s> [P image patch tokens] [proprio token] prompt tokens ... | action segment

The image (and proprio) tokens are inserted right after `<s>`, as OpenVLA does. The action segment holds the first
`A - 1` action tokens (teacher forcing) in autoregressive mode. In parallel mode it holds `A` placeholders with
zeroed input embeddings followed by the stop token `config.stop_token_id` (`</s>` for Llama-2), as OpenVLA-OFT's
discrete decoding builds it. In both modes the logits of action token `j` are read at the position just before it
(the causal next-token alignment of OpenVLA and OpenVLA-OFT): positions `start - 1 ... start + A - 2`, `start` being
the first action position, i.e. the last prompt token and the first `A - 1` placeholders.

Attention: autoregressive models are causal. Parallel models attend fully bidirectionally, as OpenVLA-OFT's patched
Llama SDPA attention (`is_causal=False`) does: every token (`<s>`, image patches, proprio, prompt, placeholders, stop
token) sees every other one, so prompt and image states also depend on the placeholders and the stop token. Padded
positions are never attended as keys, and position ids count only real tokens, so a left-padded row computes
exactly what it computes alone (OFT moves pads to the right instead and numbers positions from 0; for the real
tokens that is the same computation).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import timm
import torch
from timm.layers import LayerScale
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.utils import ModelOutput

from ...action_tokenizer import ActionSpace, select_norm_stats, unnormalize_actions
from ...losses import action_cross_entropy
from ...policy import Generators, sample_from_logits
from .configuration_openvla import OpenVLAConfig


__all__ = ["OpenVLAForActionPrediction", "OpenVLAOutput", "OpenVLAPreTrainedModel"]


@dataclass
class OpenVLAOutput(ModelOutput):
    """Output of [`OpenVLAForActionPrediction.forward`].

    Args:
        loss (`torch.FloatTensor`, *optional*):
            Mean cross-entropy of the action tokens in `labels` (ignoring `-100`), when `labels` is given.
        action_logits (`torch.FloatTensor` of shape `[B, A, n_action_bins]`, *optional*):
            Logits of each action token restricted to the action bins (column `j` = token id `first_token_id + j`).
        logits (`torch.FloatTensor` of shape `[B, L, vocab]`, *optional*):
            Full-vocabulary logits of every position of the multimodal prompt; only for an autoregressive model
            called without `action_token_ids`.
    """

    loss: torch.FloatTensor | None = None
    action_logits: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class OpenVLALayerScale(nn.Module):
    """timm's `LayerScale` whose parameter is named `scale_factor`, as in OpenVLA checkpoints (transformers treats
    parameters named `gamma` as legacy LayerNorm weights and renames them on load)."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.scale_factor = nn.Parameter(scale.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.scale_factor


class OpenVLAVisionBackbone(nn.Module):
    """One timm ViT (`featurizer`) or two (`featurizer` + `fused_featurizer`) returning the patch tokens of their
    second-to-last block, concatenated on the feature dimension."""

    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        self.use_fused_vision_backbone = config.use_fused_vision_backbone
        self.featurizer = self._build_featurizer(config, 0)
        self.embed_dim = self.featurizer.embed_dim
        if self.use_fused_vision_backbone:
            self.fused_featurizer = self._build_featurizer(config, 1)
            self.embed_dim += self.fused_featurizer.embed_dim

    @staticmethod
    def _build_featurizer(config: OpenVLAConfig, index: int) -> nn.Module:
        vit = timm.create_model(
            config.timm_model_ids[index],
            pretrained=False,
            num_classes=0,
            img_size=config.image_sizes[index],
            act_layer=config.timm_override_act_layers[index],
            **config.timm_model_kwargs[index],
        )
        for block in vit.blocks:
            for name in ("ls1", "ls2"):
                if isinstance(getattr(block, name, None), LayerScale):
                    setattr(block, name, OpenVLALayerScale(getattr(block, name).gamma))
        return vit

    def freeze_unused(self) -> None:
        """Freeze what never runs: the features come from the second-to-last block, so the last block, the final
        norm and the pooling head are kept (the checkpoint has them) but unused. Frozen, DDP does not wait for their
        gradients and optimizers keep no state for them."""
        for vit in (self.featurizer, getattr(self, "fused_featurizer", None)):
            if vit is None:
                continue
            for module in [vit.blocks[-1]] + [
                getattr(vit, name, None) for name in ("norm", "fc_norm", "attn_pool", "head")
            ]:
                if module is not None:
                    module.requires_grad_(False)

    @staticmethod
    def _patch_features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return vit.get_intermediate_layers(images, n=[len(vit.blocks) - 2])[0]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3 or 6, H, W]` -> patch features `[N, num_patches, embed_dim]`."""
        if not self.use_fused_vision_backbone:
            return self._patch_features(self.featurizer, pixel_values)
        images, fused_images = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat(
            [self._patch_features(self.featurizer, images), self._patch_features(self.fused_featurizer, fused_images)],
            dim=2,
        )


class OpenVLAProjector(nn.Module):
    """Prismatic's MLP projector: `fc1-GELU-fc2-GELU-fc3` for fused backbones, `fc1-GELU-fc2` otherwise."""

    def __init__(self, use_fused_vision_backbone: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        if use_fused_vision_backbone:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
            self.act_fn2 = nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.fc2(self.act_fn1(self.fc1(features)))
        if self.use_fused_vision_backbone:
            hidden = self.fc3(self.act_fn2(hidden))
        return hidden


class OpenVLAProprioProjector(nn.Module):
    """OpenVLA-OFT's proprio projector: `fc1-GELU-fc2`, one token per observation."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class OpenVLAPreTrainedModel(PreTrainedModel):
    """Base class holding the `PreTrainedModel` settings of OpenVLA models."""

    config_class = OpenVLAConfig
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenVLAProjector", "LlamaDecoderLayer"]
    # Custom 4D attention masks (left padding, bidirectional parallel decoding) rule out flash attention.
    _supports_sdpa = True
    _supports_flash_attn = False


class OpenVLAForActionPrediction(OpenVLAPreTrainedModel):
    """OpenVLA: camera image(s) + instruction (+ proprio) -> a distribution over discrete action tokens.

    Implements the policy contract of `trl_vla.policy` on the model itself: `action_space`, `forward(...,
    action_token_ids=...)` whose `.action_logits` are the teacher-forced logits over the action bins (this is what
    trainers call, through DDP/DeepSpeed wrappers), `action_logits(inputs, action_token_ids)` and `sample_actions`.
    """

    def __init__(self, config: OpenVLAConfig):
        super().__init__(config)
        self.vision_backbone = OpenVLAVisionBackbone(config)
        hidden_size = config.text_config.hidden_size
        self.projector = OpenVLAProjector(
            config.use_fused_vision_backbone, self.vision_backbone.embed_dim, hidden_size
        )
        if config.use_proprio:
            self.proprio_projector = OpenVLAProprioProjector(config.proprio_dim, hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.vision_backbone.freeze_unused()
        # transformers renamed the decoders' `past_key_values` argument to `cache` during 5.x; accept both.
        parameters = inspect.signature(self.language_model.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.post_init()

    # ---------------------------------------------------------------------------------------------------------------
    # PreTrainedModel plumbing
    # ---------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> OpenVLAForActionPrediction:
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading replaces every parameter by a new trainable one; the unused vision parts must stay frozen.
        (loaded[0] if isinstance(loaded, tuple) else loaded).vision_backbone.freeze_unused()
        return loaded

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # ---------------------------------------------------------------------------------------------------------------
    # Policy contract
    # ---------------------------------------------------------------------------------------------------------------

    @property
    def action_space(self) -> ActionSpace:
        """The `ActionSpace` of this model (token layout, bins, action/chunk sizes, `unnorm_key`)."""
        config = self.config
        return config.action_tokenizer().action_space(config.action_dim, config.chunk_size, config.unnorm_key)

    def action_logits(self, inputs: dict[str, torch.Tensor], action_token_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits `[B, A, n_action_bins]` of `action_token_ids` (`[B, A]`) given the processor's
        `inputs`; the same as `self(**inputs, action_token_ids=action_token_ids).action_logits`."""
        return self(**inputs, action_token_ids=action_token_ids).action_logits

    @torch.no_grad()
    def sample_actions(
        self,
        inputs: dict[str, torch.Tensor],
        temperature: float = 1.0,
        generator: Generators = None,
        unnorm_key: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Sample one decision per row of `inputs` (the processor's output), only over the action bins.

        Args:
            inputs: `input_ids`, `attention_mask`, `pixel_values` (and `proprio` when the model uses it).
            temperature: Sampling temperature; `0` takes the argmax.
            generator: Random generator of the logits' device, or one per row, for reproducible sampling.
            unnorm_key: Key into `config.norm_stats`; defaults to `config.unnorm_key`.

        Returns:
            `token_ids` (`[B, A]` int64), `log_probs` (`[B, A]` float32, under the temperature-scaled distribution, or
            the untempered one when `temperature == 0`) and `actions` (`[B, chunk_size, action_dim]` numpy float32,
            un-normalised with `config.norm_stats[unnorm_key]`).
        """
        config = self.config
        # Fail before computing anything when the statistics cannot be resolved.
        _, stats = select_norm_stats(config.norm_stats, unnorm_key if unnorm_key is not None else config.unnorm_key)
        if config.decoding == "parallel":
            columns, log_probs = sample_from_logits(self(**inputs).action_logits, temperature, generator)
        else:
            columns, log_probs = self._sample_autoregressive(inputs, temperature, generator)
        tokenizer = config.action_tokenizer()
        token_ids = tokenizer.columns_to_token_ids(columns)
        normalized = tokenizer.decode(token_ids.cpu().numpy()).reshape(-1, config.chunk_size, config.action_dim)
        return token_ids, log_probs, unnormalize_actions(normalized, stats)

    # ---------------------------------------------------------------------------------------------------------------
    # Forward
    # ---------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        action_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> OpenVLAOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `[B, L]`):
                Left-padded prompt token ids starting with `<s>` (the processor's `input_ids`).
            attention_mask (`torch.Tensor` of shape `[B, L]`, *optional*):
                1 for prompt tokens, 0 for (left) padding. Defaults to all ones.
            pixel_values (`torch.Tensor` of shape `[B, 6 * num_images, H, W]`):
                Per image, the two normalisations of the fused backbone stacked on channels (3 channels per image
                for a single featurizer); the images of one observation follow each other on channels.
            proprio (`torch.Tensor` of shape `[B, proprio_dim]`, *optional*):
                Normalised proprioceptive state; required when `config.use_proprio`.
            action_token_ids (`torch.LongTensor` of shape `[B, A]`, *optional*):
                Action tokens to score (teacher forcing). Required for autoregressive models to get `action_logits`;
                parallel models read the same logits whatever the ids (placeholders have zeroed embeddings and are
                followed by the stop token).
            labels (`torch.LongTensor` of shape `[B, A]`, *optional*):
                Target action token ids (`-100` to ignore) for the cross-entropy `loss`; they also serve as
                `action_token_ids` when those are not given.
            kwargs:
                Passed to the language model (e.g. `output_attentions`).
        """
        config = self.config
        if labels is not None:
            self._check_action_ids(labels, input_ids.shape[0], "labels", allow_ignore=True)
            if action_token_ids is None:
                first = config.action_tokenizer().first_token_id
                action_token_ids = labels.masked_fill(labels == -100, first)
        if action_token_ids is not None:
            self._check_action_ids(action_token_ids, input_ids.shape[0], "action_token_ids")
        elif config.decoding == "autoregressive":
            return OpenVLAOutput(
                logits=self._prompt_logits(input_ids, attention_mask, pixel_values, proprio, **kwargs)
            )

        embeds, valid = self._prompt_embeddings(input_ids, attention_mask, pixel_values, proprio)
        start = embeds.shape[1]
        num_tokens = config.num_action_tokens
        parallel = config.decoding == "parallel"
        if parallel:
            # OFT: placeholder inputs carry no information (their embeddings are zeroed), only their positions; the
            # stop token after them is a real token, as at OFT's training time.
            placeholders = embeds.new_zeros(embeds.shape[0], num_tokens, embeds.shape[2])
            stop_ids = input_ids.new_full((embeds.shape[0], 1), config.resolved_stop_token_id)
            segment = torch.cat([placeholders, self.get_input_embeddings()(stop_ids).to(embeds.dtype)], dim=1)
        else:
            # The last action token is never an input: no readout position comes after it.
            segment = self.get_input_embeddings()(action_token_ids[:, :-1])
        embeds = torch.cat([embeds, segment], dim=1)
        valid = torch.cat([valid, valid.new_ones(segment.shape[:2])], dim=1)
        hidden = self._decode(embeds, valid, causal=not parallel, **kwargs)
        action_logits = self._action_head(hidden[:, start - 1 : start - 1 + num_tokens])

        loss = None
        if labels is not None:
            columns = config.action_tokenizer().token_ids_to_columns(labels).masked_fill(labels == -100, -100)
            loss = action_cross_entropy(action_logits, columns)
        return OpenVLAOutput(loss=loss, action_logits=action_logits)

    # ---------------------------------------------------------------------------------------------------------------
    # Internals
    # ---------------------------------------------------------------------------------------------------------------

    def _check_action_ids(self, ids: torch.Tensor, batch_size: int, name: str, allow_ignore: bool = False) -> None:
        expected = (batch_size, self.config.num_action_tokens)
        if ids.dim() != 2 or tuple(ids.shape) != expected:
            raise ValueError(
                f"`{name}` must have shape [batch, action_dim * chunk_size] = {list(expected)}, got {list(ids.shape)}."
            )
        tokenizer = self.config.action_tokenizer()
        ok = tokenizer.is_action_token(ids)
        if allow_ignore:
            ok |= ids == -100
        if not bool(ok.all()):
            bad = ids[~ok][:8].tolist()
            raise ValueError(
                f"`{name}` holds ids {bad} that are not action tokens (expected {tokenizer.first_token_id}.."
                f"{tokenizer.first_token_id + tokenizer.n_bins - 1})."
            )

    def _visual_tokens(
        self, pixel_values: torch.Tensor | None, proprio: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """Projected patch tokens of every image (then the proprio token): `[B, P, hidden]`."""
        config = self.config
        per_image = 6 if config.use_fused_vision_backbone else 3
        expected = per_image * config.num_images
        if pixel_values is None or pixel_values.dim() != 4 or pixel_values.shape[:2] != (batch, expected):
            shape = None if pixel_values is None else list(pixel_values.shape)
            raise ValueError(
                f"`pixel_values` must have shape [{batch}, {expected}, H, W] ({config.num_images} image(s) of "
                f"{per_image} channels), got {shape}."
            )
        size = config.image_sizes[0]
        if tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(
                f"Images must be {size}x{size} (the processor resizes them), got {list(pixel_values.shape[2:])}."
            )
        images = pixel_values.reshape(batch * config.num_images, per_image, size, size)
        images = images.to(self.projector.fc1.weight.dtype)
        patches = self.projector(self.vision_backbone(images))
        tokens = patches.reshape(batch, -1, patches.shape[-1])
        if config.use_proprio:
            if proprio is None or tuple(proprio.shape) != (batch, config.proprio_dim):
                shape = None if proprio is None else list(proprio.shape)
                raise ValueError(
                    f"This model uses proprio: pass `proprio` of shape [{batch}, {config.proprio_dim}], got {shape}."
                )
            proprio_token = self.proprio_projector(proprio.to(tokens.dtype))[:, None]
            tokens = torch.cat([tokens, proprio_token], dim=1)
        return tokens

    def _prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        proprio: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `[B, L + P, hidden]` of the multimodal prompt and its validity mask `[B, L + P]` (bool)."""
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("`input_ids` must be a [batch, length] tensor of token ids.")
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.bool()
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` {list(attention_mask.shape)} must match `input_ids` {list(input_ids.shape)}."
            )
        if not bool(attention_mask[:, -1].all()) or bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError("OpenVLA expects left padding: each `attention_mask` row must be zeros then ones.")
        text = self.get_input_embeddings()(input_ids)
        visual = self._visual_tokens(pixel_values, proprio, batch)
        num_visual = visual.shape[1]
        # Row b holds n_pad[b] pads, then <s> at index n_pad[b]: the visual tokens go right after it. Gather every
        # position of the multimodal row from `cat([text, visual])` so that the whole batch is built at once.
        bos = (length - attention_mask.sum(1))[:, None]
        positions = torch.arange(length + num_visual, device=input_ids.device)[None]
        is_visual = (positions > bos) & (positions <= bos + num_visual)
        source = torch.where(
            positions <= bos, positions, torch.where(is_visual, length + positions - bos - 1, positions - num_visual)
        )
        combined = torch.cat([text, visual.to(text.dtype)], dim=1)
        embeds = combined.gather(1, source[..., None].expand(-1, -1, combined.shape[-1]))
        valid = torch.cat([attention_mask, attention_mask.new_ones(batch, num_visual)], dim=1).gather(1, source)
        return embeds, valid

    def _attention_bias(
        self, valid: torch.Tensor, query_length: int, dtype: torch.dtype, causal: bool = True
    ) -> torch.Tensor:
        """Additive 4D mask `[B, 1, q, K]` for the last `query_length` of `K` positions: no padded keys, and causal
        unless `causal=False` (parallel decoding: every real position sees every other one)."""
        key_length = valid.shape[1]
        keys = torch.arange(key_length, device=valid.device)
        queries = keys[key_length - query_length :]
        if causal:
            allowed = (keys[None, :] <= queries[:, None])[None] & valid[:, None, :]
        else:
            allowed = valid[:, None, :].expand(-1, query_length, -1)
        # Every query also sees itself, so that the rows of padded positions are never empty (no NaN).
        allowed = allowed | (keys[None, :] == queries[:, None])[None]
        bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def _decode(self, embeds: torch.Tensor, valid: torch.Tensor, causal: bool = True, **kwargs: Any) -> torch.Tensor:
        """Last hidden states of the language model over a full multimodal sequence."""
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        output = self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=self._attention_bias(valid, valid.shape[1], embeds.dtype, causal),
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        return output.last_hidden_state

    def _action_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states `[..., hidden]` -> logits over the action bins `[..., n_action_bins]`."""
        first = self.config.action_tokenizer().first_token_id
        return self.get_output_embeddings()(hidden)[..., first : first + self.config.n_action_bins]

    def _prompt_logits(self, input_ids, attention_mask, pixel_values, proprio, **kwargs: Any) -> torch.Tensor:
        embeds, valid = self._prompt_embeddings(input_ids, attention_mask, pixel_values, proprio)
        return self.get_output_embeddings()(self._decode(embeds, valid, **kwargs))

    def _sample_autoregressive(
        self, inputs: dict[str, torch.Tensor], temperature: float, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One action token after the other with a KV cache; returns `(columns, log_probs)`, each `[B, A]`."""
        embeds, valid = self._prompt_embeddings(
            inputs["input_ids"], inputs.get("attention_mask"), inputs.get("pixel_values"), inputs.get("proprio")
        )
        language_model = self.language_model.model
        cache = DynamicCache(config=self.config.text_config)
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        hidden = language_model(
            inputs_embeds=embeds,
            attention_mask=self._attention_bias(valid, valid.shape[1], embeds.dtype),
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_argument: cache},
        ).last_hidden_state[:, -1]
        next_position = position_ids[:, -1:] + 1
        tokenizer = self.config.action_tokenizer()
        columns, log_probs = [], []
        for step in range(self.config.num_action_tokens):
            column, log_prob = sample_from_logits(self._action_head(hidden), temperature, generator)
            columns.append(column)
            log_probs.append(log_prob)
            if step == self.config.num_action_tokens - 1:
                break
            token_embeds = self.get_input_embeddings()(tokenizer.columns_to_token_ids(column))[:, None]
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)
            hidden = language_model(
                inputs_embeds=token_embeds,
                attention_mask=self._attention_bias(valid, 1, token_embeds.dtype),
                position_ids=next_position,
                use_cache=True,
                **{self._cache_argument: cache},
            ).last_hidden_state[:, -1]
            next_position = next_position + 1
        return torch.stack(columns, dim=1), torch.stack(log_probs, dim=1)
