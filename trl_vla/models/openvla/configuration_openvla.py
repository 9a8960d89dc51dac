"""Configuration of OpenVLA (Prismatic VLM + discrete action tokens), with OpenVLA-OFT's parallel decoding."""

from __future__ import annotations

import json
import os
import re
from dataclasses import field
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...action_tokenizer import ActionTokenizer


__all__ = ["OpenVLAConfig"]

# The fused vision backbones of the released Prismatic/OpenVLA checkpoints: timm ids, input resolutions, act layers.
VISION_BACKBONES: dict[str, dict[str, list]] = {
    "dinosiglip-vit-so-224px": {
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "image_sizes": [224, 224],
        "timm_override_act_layers": [None, None],
    },
    "dinosiglip-vit-so-384px": {
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"],
        "image_sizes": [384, 384],
        "timm_override_act_layers": [None, None],
    },
    "dinoclip-vit-l-336px": {
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_large_patch14_clip_336.openai"],
        "image_sizes": [336, 336],
        "timm_override_act_layers": [None, "quick_gelu"],
    },
}

DECODING_MODES = ("autoregressive", "parallel")

# Released fine-tuned checkpoints keep their action statistics next to the weights; OpenVLA's and OpenVLA-OFT's
# loaders (`get_vla` in `experiments/robot/openvla_utils.py`, SimpleVLA-RL's `fsdp_workers.py`) replace
# `norm_stats` with this file whenever it exists.
DATASET_STATISTICS_FILE = "dataset_statistics.json"
# Modules that OpenVLA-OFT trains outside the VLA and saves as `<name>--<step>_checkpoint.pt` next to it (found by
# `find_checkpoint_file(folder, name)`: a file whose name contains `name` and "checkpoint").
EXTRA_MODULE_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)--.*checkpoint.*\.pt$")


def _weight_names(folder: str) -> set[str] | None:
    """Parameter names stored in the safetensors weights of `folder` (headers only), or `None` if there are none."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return set(json.load(f)["weight_map"])
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    return None


def _released_layout_settings(folder: str, config_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`config_dict` completed from the files of a released checkpoint folder: `dataset_statistics.json` replaces
    `norm_stats`, and OpenVLA-OFT's extra module files are either covered by the weights or refused by name."""
    statistics = os.path.join(folder, DATASET_STATISTICS_FILE)
    if os.path.isfile(statistics) and "norm_stats" not in overrides:
        with open(statistics) as f:
            config_dict = {**config_dict, "norm_stats": json.load(f)}
    use_proprio = overrides.get("use_proprio", config_dict.get("use_proprio", False))
    for filename in sorted(os.listdir(folder)):
        match = EXTRA_MODULE_FILE.match(filename)
        if match is None:
            continue
        name = match.group("name")
        if name == "proprio_projector":
            if not use_proprio:
                continue  # as OpenVLA-OFT and SimpleVLA-RL without proprio: the file is not used
            names = _weight_names(folder)
            if names is not None and any(n.startswith("proprio_projector.") for n in names):
                continue  # the weights hold the projector (a checkpoint saved by this package)
            raise ValueError(
                f"{os.path.join(folder, filename)} holds OpenVLA-OFT's proprio projector outside the model weights, "
                "and this loader does not merge such files: with `use_proprio=True` the projector would start from "
                "random weights. Load with `use_proprio=False`, or save a checkpoint whose weights include "
                "`proprio_projector.*` (load its `fc1`/`fc2` state dict, without the `module.` prefix, into "
                "`model.proprio_projector`, then `save_pretrained`)."
            )
        kind = {
            "action_head": "a continuous action head (L1 regression or diffusion)",
            "noisy_action_projector": "the noisy-action projector of a diffusion action head",
            "vision_backbone": "a FiLM-conditioned vision backbone",
        }.get(name, f"an extra `{name}` module")
        raise ValueError(
            f"{os.path.join(folder, filename)} holds {kind} that OpenVLA-OFT trains outside the VLA. "
            "`OpenVLAForActionPrediction` predicts discrete action tokens only and cannot load it; loading the "
            "folder without it would give a different policy than the checkpoint's. Use a checkpoint trained with "
            "discrete action tokens, or remove the file to use the VLA weights alone."
        )
    return config_dict


class OpenVLAConfig(PreTrainedConfig):
    r"""
    Configuration of [`OpenVLAForActionPrediction`]: a Prismatic VLM (one or two timm ViTs, an MLP projector and a
    causal language model) that emits discrete action tokens.

    The defaults describe `openvla/openvla-7b` (DINOv2 + SigLIP at 224 px, Llama-2 7B, 256 action bins on the last
    ids of the 32000-token vocabulary), so the `config.json` of a released OpenVLA checkpoint loads into this class
    without `trust_remote_code`. The action fields (`decoding`, `chunk_size`, `use_proprio`, `num_images`) add
    OpenVLA-OFT's discrete parallel decoding.

    Args:
        vision_backbone_id (`str`, *optional*, defaults to `"dinosiglip-vit-so-224px"`):
            Prismatic name of the vision backbone. It fills `timm_model_ids`, `image_sizes` and
            `timm_override_act_layers` when those are not given.
        llm_backbone_id (`str`, *optional*, defaults to `"llama2-7b-pure"`):
            Prismatic name of the language model (informational).
        arch_specifier (`str`, *optional*, defaults to `"no-align+fused-gelu-mlp"`):
            Prismatic projector specifier (informational; the projector follows `use_fused_vision_backbone`).
        use_fused_vision_backbone (`bool`, *optional*):
            Two featurizers whose patch features are concatenated; defaults to `len(timm_model_ids) == 2`.
        image_resize_strategy (`str`, *optional*, defaults to `"resize-naive"`):
            How the processor brings images to `image_sizes` (only `"resize-naive"` is implemented).
        timm_model_ids (`list[str]`, *optional*):
            timm architectures of the featurizer(s), built with `pretrained=False` (nothing is downloaded).
        image_sizes (`list[int]`, *optional*):
            Input resolution of each featurizer.
        timm_override_act_layers (`list[str | None]`, *optional*):
            Activation override of each featurizer (`None` keeps timm's).
        timm_model_kwargs (`list[dict]`, *optional*):
            Extra `timm.create_model` arguments of each featurizer (e.g. `embed_dim`, `depth`, `num_heads`,
            `patch_size` for tiny test models). Empty for the released checkpoints.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the language model (a Llama by default), built with `AutoModelForCausalLM.from_config`.
        llm_max_length (`int`, *optional*, defaults to `2048`):
            Maximum sequence length of the language model (informational).
        pad_token_id (`int`, *optional*, defaults to `32000`):
            Id of the padding token (OpenVLA adds `<PAD>` after the 32000 Llama-2 tokens).
        pad_to_multiple_of (`int`, *optional*, defaults to `64`):
            Padding of the embedding matrix: `text_config.vocab_size = base vocabulary + pad_to_multiple_of`, so
            the base vocabulary (whose tail holds the action tokens) is `text_config.vocab_size - pad_to_multiple_of`.
        norm_stats (`dict`, *optional*):
            Normalisation statistics, `norm_stats[unnorm_key]["action"]` with `q01`, `q99`, `mask` (and optionally
            `norm_stats[unnorm_key]["proprio"]`), as in OpenVLA checkpoints.
        n_action_bins (`int`, *optional*, defaults to `256`):
            Number of action bins (= action tokens).
        unnorm_key (`str`, *optional*):
            Default key into `norm_stats` used to un-normalise actions; required when `norm_stats` has several keys.
        action_dim (`int`, *optional*, defaults to `7`):
            Dimensions of one robot action.
        chunk_size (`int`, *optional*, defaults to `1`):
            Actions per decision (OFT uses 8 on LIBERO).
        decoding (`str`, *optional*, defaults to `"autoregressive"`):
            `"autoregressive"`: OpenVLA, one action token after the other (KV cache when sampling).
            `"parallel"`: OpenVLA-OFT (discrete), `action_dim * chunk_size` placeholder positions with zeroed input
            embeddings followed by the stop token (`stop_token_id`), all tokens from one forward pass with full
            bidirectional attention over every non-padding token (as OFT's patched Llama SDPA attention).
        stop_token_id (`int`, *optional*):
            Token appended after the placeholders in parallel decoding (OpenVLA-OFT appends `</s>`, id 2 for
            Llama-2). `None` uses `text_config.eos_token_id`. Unused in autoregressive mode.
        first_action_token_id (`int`, *optional*):
            `None` (OpenVLA): the action tokens are the last `n_action_bins` ids of the base vocabulary, descending
            with value. An integer: the action tokens are `first_action_token_id ...` (newly added tokens), ascending.
        use_proprio (`bool`, *optional*, defaults to `False`):
            Project a proprioceptive state (`proprio_dim` floats) into one extra token after the image patches (OFT).
        proprio_dim (`int`, *optional*, defaults to `8`):
            Size of the proprioceptive state (LIBERO: eef position, axis-angle, gripper qpos).
        num_images (`int`, *optional*, defaults to `1`):
            Images per observation: 1 (third-person) or 2 (plus a wrist camera, as OFT on LIBERO).
    """

    model_type = "openvla"
    # Llama-2 7B with OpenVLA's padded vocabulary: 32000 tokens + <PAD>, padded to a multiple of 64.
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32064, "pad_token_id": 32000}
        )
    }

    vision_backbone_id: str = field(
        default="dinosiglip-vit-so-224px", metadata={"help": "Prismatic name of the vision backbone."}
    )
    llm_backbone_id: str = field(default="llama2-7b-pure", metadata={"help": "Prismatic name of the LLM."})
    arch_specifier: str = field(default="no-align+fused-gelu-mlp", metadata={"help": "Prismatic projector name."})
    use_fused_vision_backbone: bool | None = field(
        default=None, metadata={"help": "Two featurizers with concatenated features; default: two timm ids."}
    )
    image_resize_strategy: str = field(default="resize-naive", metadata={"help": "Image resize strategy."})
    timm_model_ids: list[str] | None = field(default=None, metadata={"help": "timm architectures of the ViTs."})
    image_sizes: list[int] | None = field(default=None, metadata={"help": "Input resolution of each ViT."})
    timm_override_act_layers: list[str | None] | None = field(
        default=None, metadata={"help": "Activation override of each ViT."}
    )
    timm_model_kwargs: list[dict] | None = field(
        default=None, metadata={"help": "Extra `timm.create_model` arguments of each ViT (size overrides)."}
    )
    text_config: dict | PreTrainedConfig | None = field(
        default=None, metadata={"help": "Configuration of the language model."}
    )
    llm_max_length: int = field(default=2048, metadata={"help": "Maximum sequence length of the LLM."})
    pad_token_id: int | None = field(default=32000, metadata={"help": "Padding token id."})
    pad_to_multiple_of: int = field(default=64, metadata={"help": "Embedding rows added after the base vocabulary."})
    norm_stats: dict | None = field(default=None, metadata={"help": "norm_stats[unnorm_key]['action'|'proprio']."})
    n_action_bins: int = field(default=256, metadata={"help": "Number of action bins (= action tokens)."})
    unnorm_key: str | None = field(default=None, metadata={"help": "Default key into `norm_stats`."})
    action_dim: int = field(default=7, metadata={"help": "Dimensions of one robot action."})
    chunk_size: int = field(default=1, metadata={"help": "Actions per decision."})
    decoding: str = field(default="autoregressive", metadata={"help": "'autoregressive' or 'parallel'."})
    stop_token_id: int | None = field(
        default=None, metadata={"help": "Token after the parallel placeholders; None: `text_config.eos_token_id`."}
    )
    first_action_token_id: int | None = field(
        default=None, metadata={"help": "None: vocabulary-tail layout (OpenVLA); else first id of added tokens."}
    )
    use_proprio: bool = field(default=False, metadata={"help": "Add a projected proprioceptive token."})
    proprio_dim: int = field(default=8, metadata={"help": "Size of the proprioceptive state."})
    num_images: int = field(default=1, metadata={"help": "Images per observation (1, or 2 with a wrist camera)."})
    tie_word_embeddings: bool = field(default=False, metadata={"help": "Llama-2 does not tie its embeddings."})

    def __post_init__(self, **kwargs: Any):
        # Released OpenVLA configs store these fields derived from `vision_backbone_id`; fill in what is missing.
        known = VISION_BACKBONES.get(self.vision_backbone_id)
        for name in ("timm_model_ids", "image_sizes", "timm_override_act_layers"):
            if getattr(self, name) is None:
                if known is None:
                    raise ValueError(
                        f"Unknown `vision_backbone_id`={self.vision_backbone_id!r}: give `timm_model_ids`, "
                        f"`image_sizes` and `timm_override_act_layers` explicitly, or use one of {sorted(VISION_BACKBONES)}."
                    )
                setattr(self, name, list(known[name]))
        num_featurizers = len(self.timm_model_ids)
        if self.timm_model_kwargs is None:
            self.timm_model_kwargs = [{} for _ in range(num_featurizers)]
        if self.use_fused_vision_backbone is None:
            self.use_fused_vision_backbone = num_featurizers == 2
        super().__post_init__(**kwargs)
        self._check_consistency()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> OpenVLAConfig:
        # `from_dict` reads the folder's extra files (`AutoConfig` passes `name_or_path` itself).
        kwargs.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> OpenVLAConfig:
        """Also reads a released checkpoint folder's extra files when the dict comes from one: its
        `dataset_statistics.json` replaces `norm_stats` (as OpenVLA's loaders do), and OpenVLA-OFT's separately saved
        modules (`action_head--*_checkpoint.pt`, ...) that this model cannot load raise a `ValueError` naming the
        file."""
        folder = kwargs.get("name_or_path")
        if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
            config_dict = _released_layout_settings(os.fspath(folder), config_dict, kwargs)
        loaded = super().from_dict(config_dict, **kwargs)
        # `from_dict` sets the keyword arguments after `__post_init__` (e.g. `decoding="parallel"`, `chunk_size=8`
        # for OpenVLA-OFT checkpoints, whose `config.json` has no such fields): check them too.
        (loaded[0] if isinstance(loaded, tuple) else loaded)._check_consistency()
        return loaded

    def _check_consistency(self) -> None:
        """Raise a `ValueError` naming the first inconsistent field."""
        num_featurizers = 2 if self.use_fused_vision_backbone else 1
        for name in ("timm_model_ids", "image_sizes", "timm_override_act_layers", "timm_model_kwargs"):
            if len(getattr(self, name)) != num_featurizers:
                raise ValueError(
                    f"`{name}` needs {num_featurizers} entries (one per featurizer), got {getattr(self, name)}."
                )
        if len(set(self.image_sizes)) != 1:
            raise ValueError(f"The featurizers must share one input resolution, got `image_sizes`={self.image_sizes}.")
        if self.decoding not in DECODING_MODES:
            raise ValueError(f"`decoding` must be one of {DECODING_MODES}, got {self.decoding!r}.")
        for name in ("action_dim", "chunk_size", "n_action_bins", "proprio_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.num_images not in (1, 2):
            raise ValueError(f"`num_images` must be 1 or 2 (third-person + wrist camera), got {self.num_images}.")
        if self.image_resize_strategy != "resize-naive":
            raise ValueError(
                f"Only `image_resize_strategy='resize-naive'` is implemented, got {self.image_resize_strategy!r}."
            )
        if self.decoding == "parallel":
            stop = self.resolved_stop_token_id
            if not isinstance(stop, int) or not 0 <= stop < self.text_config.vocab_size:
                raise ValueError(
                    "Parallel decoding appends a stop token after the placeholders: set `stop_token_id` (or "
                    f"`text_config.eos_token_id`) to an id below {self.text_config.vocab_size}, got {stop!r}."
                )
        last = self.action_tokenizer().token_ids[-1]
        if last >= self.text_config.vocab_size:
            raise ValueError(
                f"The action tokens reach id {last} but the language model has only {self.text_config.vocab_size} "
                "embedding rows; check `first_action_token_id`, `pad_to_multiple_of` and `text_config.vocab_size`."
            )

    @property
    def num_action_tokens(self) -> int:
        """Tokens per decision: `action_dim * chunk_size`."""
        return self.action_dim * self.chunk_size

    @property
    def resolved_stop_token_id(self) -> int | None:
        """The stop token of parallel decoding: `stop_token_id`, else `text_config.eos_token_id`."""
        return self.stop_token_id if self.stop_token_id is not None else self.text_config.eos_token_id

    def action_tokenizer(self) -> ActionTokenizer:
        """The `ActionTokenizer` of this model's action-token layout."""
        if self.first_action_token_id is not None:
            return ActionTokenizer(first_token_id=self.first_action_token_id, n_bins=self.n_action_bins)
        return ActionTokenizer(
            vocab_size=self.text_config.vocab_size - self.pad_to_multiple_of, n_bins=self.n_action_bins
        )
