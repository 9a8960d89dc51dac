"""Any Hugging Face image-text-to-text model as a token-action VLA policy.

`VLMForActionPrediction` wraps a model loaded with `transformers.AutoModelForImageTextToText` and re-uses the last
`n_bins` ids of its text vocabulary as action tokens, exactly as OpenVLA re-uses the tail of Llama-2's vocabulary (see
`trl_vla.ActionTokenizer`). It exposes the same members as `OpenVLAForActionPrediction`, so the trainers and
`VLAPolicy` treat both alike:

* `forward(..., action_token_ids=ids)` appends the action tokens after the prompt (teacher forcing) and returns
  `.action_logits` `[B, A, n_bins]`, the logits restricted to the action columns;
* `sample_actions(inputs, temperature, generator)` decodes the `A = action_dim x chunk_size` tokens one at a time
  with the KV cache, sampling only among the action columns, and un-normalises the actions with `norm_stats`;
* `action_space`, and a config that stores the action settings so that `save_pretrained`/`from_pretrained` keep them.

`VLMActionProcessor` wraps the VLM's own processor so that `processor(images=..., text=instructions)` builds OpenVLA's
prompt (`In: What action should the robot take to {instruction}?\\nOut:`) with the VLM's image placeholder token, left
padded. Both classes are registered with the transformers Auto classes (`AutoConfig`,
`AutoModelForImageTextToText`, `AutoProcessor`), so `trl_vla.models.load_vla` loads them.

Supported VLMs are those whose language model reads only `input_ids` and `attention_mask` per token and derives its
positions from them or from the KV cache: the Llava family (checked here on `LlavaForConditionalGeneration`) and other
VLMs built the same way. Families that need further per-token inputs (Qwen2-VL's `mm_token_type_ids` for M-RoPE,
PaliGemma's `token_type_ids` for prefix attention) are refused with an error rather than scored wrongly.

`trl_vla.testing.make_tiny_vlm_policy` writes a tiny, randomly initialised Llava (SigLIP vision tower + Llama language model) policy
whose tokenizer is trained locally: a real VLM family that builds and loads without any download.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import PROCESSOR_NAME, ModelOutput, cached_file

from ..action_tokenizer import (
    ActionSpace,
    ActionTokenizer,
    select_norm_stats,
    unnormalize_actions,
)
from ..losses import action_cross_entropy
from ..policy import Generators, sample_from_logits


__all__ = [
    "DEFAULT_ACTION_PROMPT",
    "VLMActionConfig",
    "VLMActionOutput",
    "VLMActionProcessor",
    "VLMForActionPrediction",
]

DEFAULT_ACTION_PROMPT = "{image}In: What action should the robot take to {instruction}?\nOut:"


def _special_token_ids(config: PreTrainedConfig) -> dict[str, int]:
    """Every `*_token_id`/`*_token_index` of a (composite) config, e.g. the image placeholder and the pad/eos ids."""
    ids = {}
    configs = [("", config)] + [(f"{key}.", getattr(config, key)) for key in config.sub_configs]
    for prefix, sub in configs:
        if not isinstance(sub, PreTrainedConfig):
            continue
        for name, value in sub.to_dict().items():
            if not name.endswith(("_token_id", "_token_index", "_token_ids")):
                continue
            for token_id in value if isinstance(value, list) else [value]:
                if isinstance(token_id, int):
                    ids[f"{prefix}{name}"] = token_id
    return ids


class VLMActionConfig(PreTrainedConfig):
    r"""Configuration of a [`VLMForActionPrediction`]: the wrapped VLM's config plus the action settings.

    Args:
        vlm_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the image-text-to-text model (anything `AutoModelForImageTextToText` builds).
        action_dim (`int`, *optional*, defaults to `7`):
            Dimensions of one robot action (7 for LIBERO: delta xyz, delta rpy, gripper).
        chunk_size (`int`, *optional*, defaults to `1`):
            Actions per decision; the policy emits `action_dim * chunk_size` tokens, chunk-major.
        n_bins (`int`, *optional*, defaults to `256`):
            Number of action bins (token ids) per action token.
        action_vocab_size (`int`, *optional*):
            Size of the base vocabulary whose last `n_bins` ids become the action tokens (OpenVLA: 32000). Defaults to
            the text vocabulary size of `vlm_config`. Pass the size *before* appended special tokens when the VLM's
            tokenizer appended its image/pad tokens at the end (Llava-1.5: 32000, not 32064).
        norm_stats (`dict`, *optional*):
            `{unnorm_key: {"action": {"q01", "q99", "mask", ...}}}`, as in OpenVLA checkpoints.
        unnorm_key (`str`, *optional*):
            Which statistics un-normalise the sampled actions; may be left out when `norm_stats` has one key.
        use_proprio (`bool`, *optional*, defaults to `False`):
            Read by `VLAPolicy`; this wrapper has no proprio input, so it must stay `False`.
        num_images (`int`, *optional*, defaults to `1`):
            Read by `VLAPolicy`; this wrapper reads one camera image per observation, so it must stay `1`.
    """

    model_type = "vlm_action"
    sub_configs = {"vlm_config": AutoConfig}

    def __init__(
        self,
        vlm_config: PreTrainedConfig | dict | None = None,
        action_dim: int = 7,
        chunk_size: int = 1,
        n_bins: int = 256,
        action_vocab_size: int | None = None,
        norm_stats: dict[str, Any] | None = None,
        unnorm_key: str | None = None,
        use_proprio: bool = False,
        num_images: int = 1,
        **kwargs,
    ):
        if isinstance(vlm_config, dict):
            if "model_type" not in vlm_config:
                raise ValueError("`vlm_config` given as a dict needs a `model_type` key.")
            vlm_config = CONFIG_MAPPING[vlm_config["model_type"]](**vlm_config)
        if use_proprio:
            raise ValueError("`VLMForActionPrediction` has no proprio input; `use_proprio` must be False.")
        if num_images != 1:
            raise ValueError(f"`VLMForActionPrediction` reads one camera image per observation, got {num_images=}.")
        self.vlm_config = vlm_config
        self.action_dim = action_dim
        self.chunk_size = chunk_size
        self.n_bins = n_bins
        self.norm_stats = norm_stats or {}
        self.unnorm_key = unnorm_key
        self.use_proprio = use_proprio
        self.num_images = num_images
        if action_vocab_size is None and vlm_config is not None:
            action_vocab_size = vlm_config.get_text_config().vocab_size
        self.action_vocab_size = action_vocab_size
        super().__init__(**kwargs)
        if vlm_config is not None:
            self._check_action_layout()

    def _check_action_layout(self) -> None:
        # `ActionSpace` checks that the dimensions are positive.
        ActionSpace(action_dim=self.action_dim, chunk_size=self.chunk_size, n_bins=self.n_bins)
        width = self.vlm_config.get_text_config().vocab_size
        if self.n_bins > self.action_vocab_size:
            raise ValueError(
                f"The vocabulary has {self.action_vocab_size} tokens, fewer than the {self.n_bins} action bins: "
                "lower `n_bins` or use a VLM with a larger vocabulary."
            )
        if self.action_vocab_size > width:
            raise ValueError(
                f"`action_vocab_size`={self.action_vocab_size} exceeds the {width} columns of the VLM's logits."
            )
        first = self.action_vocab_size - self.n_bins
        clashes = {
            name: i for name, i in _special_token_ids(self.vlm_config).items() if first <= i < first + self.n_bins
        }
        if clashes:
            raise ValueError(
                f"The action tokens {first}..{first + self.n_bins - 1} (the last {self.n_bins} ids of a "
                f"{self.action_vocab_size}-token vocabulary) would overwrite the VLM's special tokens {clashes}. Set "
                "`action_vocab_size` to the vocabulary size before the special tokens were appended (Llava-1.5: "
                "32000), or lower `n_bins`."
            )


@dataclasses.dataclass
class VLMActionOutput(ModelOutput):
    """Output of [`VLMForActionPrediction.forward`] when `action_token_ids` are given.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Mean cross-entropy of the labelled action tokens over the action columns.
        action_logits (`torch.FloatTensor` of shape `(batch_size, num_action_tokens, n_bins)`):
            Teacher-forced logits of each action token, restricted to the action columns (column `j` is token id
            `action_space.first_token_id + j`).
    """

    loss: torch.FloatTensor | None = None
    action_logits: torch.FloatTensor | None = None


class VLMForActionPrediction(PreTrainedModel):
    """A Hugging Face image-text-to-text model that acts with discrete action tokens (the `trl_vla` policy contract).

    Build one from a VLM with [`VLMForActionPrediction.from_vlm`], reload it with `from_pretrained`. The inputs are
    the output of a [`VLMActionProcessor`] (left padded: the action tokens are appended after the last prompt token).

    Example:

    ```python
    >>> import numpy as np
    >>> from trl_vla.models.vlm_policy import VLMActionProcessor, VLMForActionPrediction
    >>> from trl_vla.testing import make_tiny_vlm_policy
    >>> path = make_tiny_vlm_policy("tiny-llava-vla")
    >>> model, processor = VLMForActionPrediction.from_pretrained(path), VLMActionProcessor.from_pretrained(path)
    >>> inputs = processor(images=[np.zeros((224, 224, 3), np.uint8)], text=["open the microwave"])
    >>> token_ids, log_probs, actions = model.sample_actions(inputs, temperature=0)
    >>> actions.shape  # [batch, chunk_size, action_dim]
    (1, 1, 7)
    ```
    """

    config_class = VLMActionConfig
    base_model_prefix = "vlm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: VLMActionConfig, vlm: PreTrainedModel | None = None):
        super().__init__(config)
        if config.vlm_config is None:
            raise ValueError("`VLMActionConfig.vlm_config` is empty: build the model with `from_vlm`.")
        if vlm is None:
            vlm = AutoModelForImageTextToText.from_config(config.vlm_config)
        else:
            # `post_init` below initialises every module not flagged as initialised; a given VLM keeps its weights.
            for module in vlm.modules():
                module._is_hf_initialized = True
        self.vlm = vlm
        self.action_tokenizer = ActionTokenizer(vocab_size=config.action_vocab_size, n_bins=config.n_bins)
        # transformers 5 renamed the KV-cache argument; remote-code VLMs may still call it `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(vlm.forward).parameters else "past_key_values"
        self.post_init()

    @classmethod
    def from_vlm(
        cls,
        vlm: str | os.PathLike | PreTrainedModel,
        action_dim: int = 7,
        chunk_size: int = 1,
        n_bins: int = 256,
        action_vocab_size: int | None = None,
        norm_stats: dict[str, Any] | None = None,
        unnorm_key: str | None = None,
        **from_pretrained_kwargs,
    ) -> VLMForActionPrediction:
        """Wrap an image-text-to-text model (an instance, or a path/Hub id loaded with `AutoModelForImageTextToText`).

        The action arguments are those of [`VLMActionConfig`]; `from_pretrained_kwargs` go to the VLM's loader.
        """
        if not isinstance(vlm, PreTrainedModel):
            vlm = AutoModelForImageTextToText.from_pretrained(vlm, **from_pretrained_kwargs)
        config = VLMActionConfig(
            vlm_config=vlm.config,
            action_dim=action_dim,
            chunk_size=chunk_size,
            n_bins=n_bins,
            action_vocab_size=action_vocab_size,
            norm_stats=norm_stats,
            unnorm_key=unnorm_key,
        )
        return cls(config, vlm=vlm)

    def get_input_embeddings(self) -> torch.nn.Module:
        """The VLM's token embeddings (PEFT and gradient checkpointing reach them through this)."""
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        """Replace the VLM's token embeddings."""
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        """The VLM's LM head, whose last columns are the action logits."""
        return self.vlm.get_output_embeddings()

    @property
    def action_space(self) -> ActionSpace:
        """The `ActionSpace` compared with a teacher's before any distillation (as `OpenVLAForActionPrediction`'s)."""
        config = self.config
        return self.action_tokenizer.action_space(config.action_dim, config.chunk_size, config.unnorm_key)

    @property
    def num_action_tokens(self) -> int:
        """`A = action_dim * chunk_size`, the tokens of one decision."""
        return self.config.action_dim * self.config.chunk_size

    def _action_columns(self, logits: torch.Tensor) -> torch.Tensor:
        first = self.action_tokenizer.first_token_id
        return logits[..., first : first + self.config.n_bins]

    @staticmethod
    def _check_no_per_token_inputs(input_ids: torch.Tensor, inputs: Mapping[str, Any]) -> None:
        # Action tokens extend `input_ids` and `attention_mask` only; what another per-token input should hold for them
        # (and how the VLM derives positions from it) is family-specific, so refuse rather than guess.
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.shape == input_ids.shape:
                raise ValueError(
                    f"The input {key!r} has one entry per prompt token. `VLMForActionPrediction` appends action tokens "
                    "to `input_ids` and `attention_mask` only, so it supports VLMs whose language model needs no other "
                    "per-token input (Llava-style); families such as Qwen2-VL (`mm_token_type_ids`, M-RoPE) or "
                    "PaliGemma (`token_type_ids`, prefix attention) are not supported."
                )

    @staticmethod
    def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        # As `generate` does: each row counts its positions from its first real token, so a left-padded row sees the
        # same positions as when it is alone (exactly, whatever the position encoding).
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @staticmethod
    def _check_left_padded(attention_mask: torch.Tensor) -> None:
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(
                "The prompts are right-padded, but the action tokens are appended after the last prompt token: pad on "
                "the left (`VLMActionProcessor` does; for a bare processor set `tokenizer.padding_side = 'left'`)."
            )

    def _check_action_ids(self, ids: torch.Tensor, batch_size: int, name: str, allow_ignore: bool = False) -> None:
        expected = (batch_size, self.num_action_tokens)
        if ids.ndim != 2 or tuple(ids.shape) != expected:
            raise ValueError(
                f"`{name}` must have shape [batch, action_dim * chunk_size] = {list(expected)}, got {list(ids.shape)}."
            )
        valid = self.action_tokenizer.is_action_token(ids)
        if allow_ignore:
            valid |= ids == -100
        if not bool(valid.all()):
            first = self.action_tokenizer.first_token_id
            raise ValueError(
                f"`{name}` holds ids {ids[~valid][:8].tolist()} that are not action tokens (expected {first}.."
                f"{first + self.config.n_bins - 1})."
            )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        action_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> VLMActionOutput | ModelOutput:
        r"""Teacher-forced action logits, or the VLM's own forward pass when neither `action_token_ids` nor `labels`
        is given.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`):
                Left-padded prompt token ids with the expanded image placeholder tokens (the processor's output).
            attention_mask (`torch.Tensor` of shape `(batch_size, prompt_length)`, *optional*):
                1 for prompt tokens, 0 for (left) padding. Defaults to all ones.
            pixel_values (`torch.Tensor`, *optional*):
                The processor's image tensor, in the VLM's own layout.
            action_token_ids (`torch.LongTensor` of shape `(batch_size, num_action_tokens)`, *optional*):
                The action tokens to score. The logit at the last prompt position predicts the first of them and the
                logit at action token `i` predicts token `i + 1`, so all but the last one are appended as inputs.
            labels (`torch.LongTensor` of shape `(batch_size, num_action_tokens)`, *optional*):
                Target action token ids (`-100` to ignore) for the cross-entropy `loss` over the action columns; they
                also serve as `action_token_ids` when those are not given.
            kwargs:
                Other processor outputs and options, passed to the VLM.

        Returns:
            [`VLMActionOutput`] (`action_logits` `[B, A, n_bins]`, and `loss` with `labels`), else the output of the
            wrapped VLM (language-modelling logits).
        """
        batch_size = input_ids.shape[0]
        if labels is not None:
            self._check_action_ids(labels, batch_size, "labels", allow_ignore=True)
            if action_token_ids is None:
                action_token_ids = labels.masked_fill(labels == -100, self.action_tokenizer.first_token_id)
        if action_token_ids is None:
            return self.vlm(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)
        self._check_action_ids(action_token_ids, batch_size, "action_token_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_left_padded(attention_mask)
        self._check_no_per_token_inputs(input_ids, kwargs)
        appended = action_token_ids[:, :-1].to(input_ids.device)
        attention_mask = torch.cat([attention_mask, torch.ones_like(appended, dtype=attention_mask.dtype)], dim=1)
        outputs = self.vlm(
            input_ids=torch.cat([input_ids, appended], dim=1),
            attention_mask=attention_mask,
            position_ids=self._position_ids(attention_mask),
            pixel_values=pixel_values,
            use_cache=False,
            logits_to_keep=self.num_action_tokens,
            **kwargs,
        )
        action_logits = self._action_columns(outputs.logits)

        loss = None
        if labels is not None:
            columns = self.action_tokenizer.token_ids_to_columns(labels).masked_fill(labels == -100, -100)
            loss = action_cross_entropy(action_logits, columns)
        return VLMActionOutput(loss=loss, action_logits=action_logits)

    def action_logits(self, inputs: Mapping[str, Any], action_token_ids: torch.LongTensor) -> torch.Tensor:
        """Teacher-forced logits `[B, A, n_bins]` of `action_token_ids` `[B, A]` given the processor's `inputs`."""
        return self(**inputs, action_token_ids=action_token_ids).action_logits

    @torch.no_grad()
    def sample_actions(
        self,
        inputs: Mapping[str, Any],
        temperature: float = 1.0,
        generator: Generators = None,
        unnorm_key: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Decode one decision autoregressively (KV cache), sampling only among the action columns.

        Args:
            inputs: The processor's output (`input_ids`, `attention_mask`, `pixel_values`, ...), left padded.
            temperature: Sampling temperature; `0` takes the argmax.
            generator: Random generator on the logits' device, or one per row, for reproducible sampling.
            unnorm_key: Key into `config.norm_stats`; defaults to `config.unnorm_key`.

        Returns:
            `(token_ids [B, A], log_probs [B, A], actions)`: the sampled action token ids, their log-probabilities
            under `softmax(logits / temperature)` (untempered for `temperature=0`, which is greedy), and the robot
            actions `[B, chunk_size, action_dim]` (numpy float32, un-normalised with `norm_stats[unnorm_key]`).
        """
        # Fail before computing anything when the statistics cannot be resolved.
        _, stats = select_norm_stats(
            self.config.norm_stats, self.config.unnorm_key if unnorm_key is None else unnorm_key
        )
        inputs = dict(inputs)
        input_ids = inputs.pop("input_ids")
        attention_mask = inputs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_left_padded(attention_mask)
        self._check_no_per_token_inputs(input_ids, inputs)
        outputs = self.vlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._position_ids(attention_mask),
            use_cache=True,
            logits_to_keep=1,
            **inputs,
        )
        token_ids, log_probs = [], []
        for step in range(self.num_action_tokens):
            columns, log_prob = sample_from_logits(self._action_columns(outputs.logits[:, -1]), temperature, generator)
            token_ids.append(self.action_tokenizer.columns_to_token_ids(columns))
            log_probs.append(log_prob)
            if step == self.num_action_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            outputs = self.vlm(
                input_ids=token_ids[-1][:, None],
                attention_mask=attention_mask,
                position_ids=self._position_ids(attention_mask)[:, -1:],
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: getattr(outputs, self._cache_arg)},
            )
        token_ids, log_probs = torch.stack(token_ids, dim=1), torch.stack(log_probs, dim=1)
        normalised = self.action_tokenizer.decode(token_ids.cpu().numpy())
        normalised = normalised.reshape(-1, self.config.chunk_size, self.config.action_dim)
        return token_ids, log_probs, unnormalize_actions(normalised, stats)


class VLMActionProcessor:
    """Wraps a VLM's processor so that `processor(images=..., text=instructions)` builds action prompts.

    Each instruction becomes `prompt_template.format(image=<the VLM's image token>, instruction=...)`, and the batch is
    padded on the left, as [`VLMForActionPrediction`] requires. `save_pretrained` writes the wrapped processor to the
    `vlm_processor/` sub-folder and the template to `processor_config.json`, so `AutoProcessor.from_pretrained(path)`
    returns this class again.

    Args:
        processor (`ProcessorMixin`):
            The VLM's processor (e.g. `LlavaProcessor`); it must have an `image_token` attribute.
        prompt_template (`str`, *optional*, defaults to OpenVLA's prompt behind the image token):
            A format string with the fields `{image}` and `{instruction}`; VLMs that expect markers around the image
            token, or a chat format, spell them out here.
    """

    subfolder = "vlm_processor"

    def __init__(self, processor: Any, prompt_template: str = DEFAULT_ACTION_PROMPT):
        if getattr(processor, "image_token", None) is None:
            raise ValueError(f"{type(processor).__name__} has no `image_token`; pass the VLM's multimodal processor.")
        if "{image}" not in prompt_template or "{instruction}" not in prompt_template:
            raise ValueError(
                f"`prompt_template` must contain '{{image}}' and '{{instruction}}', got {prompt_template!r}."
            )
        self.processor = processor
        self.prompt_template = prompt_template

    @property
    def tokenizer(self) -> Any:
        """The wrapped processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        """The wrapped processor's image processor."""
        return self.processor.image_processor

    def prompts(self, instructions: Sequence[str]) -> list[str]:
        """The text prompts of `instructions` (with the image token, before the processor expands it)."""
        return [self.prompt_template.format(image=self.processor.image_token, instruction=i) for i in instructions]

    def __call__(
        self, images: Any = None, text: str | Sequence[str] | None = None, return_tensors: str = "pt", **kwargs
    ):
        """Process one image and one instruction per sample; returns the wrapped processor's `BatchFeature`."""
        if text is None or images is None:
            raise ValueError("Pass both `images` (one per sample) and `text` (one instruction per sample).")
        instructions = [text] if isinstance(text, str) else list(text)
        if (isinstance(images, np.ndarray) and images.ndim == 3) or not isinstance(images, (list, tuple, np.ndarray)):
            images = [images]  # a single image
        if len(images) != len(instructions):
            raise ValueError(f"Got {len(images)} images for {len(instructions)} instructions; pass one image each.")
        return self.processor(
            images=list(images),
            text=self.prompts(instructions),
            return_tensors=return_tensors,
            padding=True,
            padding_side="left",
            **kwargs,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the wrapped processor to `save_directory/vlm_processor` and this wrapper's settings next to it."""
        os.makedirs(save_directory, exist_ok=True)
        self.processor.save_pretrained(os.path.join(save_directory, self.subfolder), **kwargs)
        settings = {"processor_class": type(self).__name__, "prompt_template": self.prompt_template}
        with open(os.path.join(save_directory, PROCESSOR_NAME), "w") as f:
            json.dump(settings, f, indent=2)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> VLMActionProcessor:
        """Load what `save_pretrained` wrote (keyword arguments go to the wrapped processor's `from_pretrained`)."""
        kwargs.pop("trust_remote_code", None)
        with open(cached_file(pretrained_model_name_or_path, PROCESSOR_NAME)) as f:
            settings = json.load(f)
        processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, subfolder=cls.subfolder, **kwargs)
        return cls(processor, prompt_template=settings["prompt_template"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(processor={type(self.processor).__name__}, prompt_template={self.prompt_template!r})"


AutoConfig.register(VLMActionConfig.model_type, VLMActionConfig, exist_ok=True)
AutoModelForImageTextToText.register(VLMActionConfig, VLMForActionPrediction, exist_ok=True)
AutoProcessor.register(VLMActionConfig, VLMActionProcessor, exist_ok=True)
