"""Image processor and processor of OpenVLA: camera images + instructions (+ proprio) -> the model's inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from ...action_tokenizer import normalize_actions, select_norm_stats


__all__ = [
    "PROMPT_TEMPLATE",
    "OpenVLAImageProcessor",
    "OpenVLAProcessor",
    "PrismaticImageProcessor",
    "PrismaticProcessor",
]

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"

# Normalisations of the two featurizers of OpenVLA's fused DINOv2 + SigLIP backbone.
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

ImageInput = np.ndarray | Image.Image | torch.Tensor


class OpenVLAImageProcessor(BaseImageProcessor):
    """Resizes images to the backbone resolution ("resize-naive", bicubic) and stacks one normalised copy per
    featurizer on the channel dimension: `[B, 3 * len(means), size, size]` (`[B, 6, 224, 224]` for OpenVLA).

    Args:
        image_size (`int`, *optional*, defaults to `224`):
            Side of the square images the featurizers take.
        means (`list[list[float]]`, *optional*):
            Per-featurizer channel means; defaults to DINOv2's and SigLIP's.
        stds (`list[list[float]]`, *optional*):
            Per-featurizer channel standard deviations; defaults to DINOv2's and SigLIP's.
        kwargs:
            The fields of a released `PrismaticImageProcessor` (`preprocessor_config.json` of openvla-7b) are read
            as that class reads them: `input_sizes` gives `image_size`, and `tvf_normalize_params` (what it applies,
            e.g. openvla-7b's bfloat16-rounded DINOv2 statistics) take precedence over `means`/`stds`. Only its
            "resize-naive" strategy with bicubic interpolation is implemented; other settings raise a `ValueError`.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 224,
        means: Sequence[Sequence[float]] | None = None,
        stds: Sequence[Sequence[float]] | None = None,
        **kwargs: Any,
    ):
        image_size, means, stds = self._released_fields(image_size, means, stds, kwargs)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.means = [list(m) for m in (means if means is not None else [DINO_MEAN, SIGLIP_MEAN])]
        self.stds = [list(s) for s in (stds if stds is not None else [DINO_STD, SIGLIP_STD])]
        if len(self.means) != len(self.stds) or len(self.means) not in (1, 2):
            raise ValueError(
                f"Give one or two (fused) normalisations, got {len(self.means)} means, {len(self.stds)} stds."
            )

    @staticmethod
    def _released_fields(image_size, means, stds, kwargs: dict[str, Any]):
        """Consume the fields of a released `PrismaticImageProcessor` config from `kwargs`."""
        strategy = kwargs.pop("image_resize_strategy", "resize-naive")
        if strategy != "resize-naive" or kwargs.pop("tvf_do_letterbox", False):
            raise ValueError(
                f"Only the 'resize-naive' image resize strategy is implemented, got {strategy!r} (letterbox padding "
                "and resize-crop are not)."
            )
        interpolations = kwargs.pop("interpolations", None) or []
        if any(i != "bicubic" for i in interpolations):
            raise ValueError(f"Only bicubic interpolation is implemented, got {interpolations}.")
        input_sizes = kwargs.pop("input_sizes", None)
        if input_sizes is not None:
            sides = {int(s) for size in input_sizes for s in size[-2:]}
            if len(sides) != 1:
                raise ValueError(f"The featurizers must share one square input size, got `input_sizes`={input_sizes}.")
            image_size = sides.pop()
        normalize = kwargs.pop("tvf_normalize_params", None)
        if normalize:
            means, stds = [p["mean"] for p in normalize], [p["std"] for p in normalize]
        for name in ("use_fused_vision_backbone", "tvf_resize_params", "tvf_crop_params", "tvf_letterbox_fill"):
            kwargs.pop(name, None)
        return image_size, means, stds

    @staticmethod
    def _to_uint8_chw(image: ImageInput) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only buffers
        if isinstance(image, np.ndarray):
            image = np.ascontiguousarray(image)
            # A read-only array (a `datasets` column, a shared buffer): torch refuses to wrap it, so copy it.
            image = image if image.flags.writeable else image.copy()
        tensor = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
        if tensor.dim() != 3 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
            raise ValueError(
                f"Images must be uint8 [H, W, 3] arrays or PIL images, got {tuple(tensor.shape)} {tensor.dtype}."
            )
        return tensor.permute(2, 0, 1)

    def preprocess(
        self, images: ImageInput | Sequence[ImageInput], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Preprocess one image or a list of images (uint8 `[H, W, 3]` arrays or PIL images) into `pixel_values`."""
        if isinstance(images, (np.ndarray, Image.Image, torch.Tensor)) and np.ndim(images) == 3:
            images = [images]
        size = [self.image_size, self.image_size]
        resized = []
        for image in images:
            tensor = self._to_uint8_chw(image)
            if list(tensor.shape[1:]) != size:
                tensor = TF.resize(tensor, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
            resized.append(tensor)
        batch = torch.stack(resized).float() / 255.0
        pixel_values = torch.cat(
            [TF.normalize(batch, mean, std) for mean, std in zip(self.means, self.stds, strict=True)], dim=1
        )
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class OpenVLAProcessor(ProcessorMixin):
    """Turns camera images and instructions (and proprio) into the inputs of `OpenVLAForActionPrediction`.

    `processor(images=..., text=instructions, return_tensors="pt")` returns `input_ids` and `attention_mask` (left
    padded), `pixel_values` (`[B, 6 * num_images, H, W]`: per image, the fused backbone's two normalisations stacked
    on channels; with `wrist_images`, the wrist image's 6 channels follow the main image's) and, when `proprio` is
    given, `proprio` (`[B, P]` float32, normalised with `norm_stats[unnorm_key]["proprio"]` when those exist).

    The prompt is OpenVLA's, `In: What action should the robot take to {instruction.lower()}?\\nOut:`, followed by
    `prompt_end_token_id` (OpenVLA appends the empty token 29871 that followed "Out:" at training time).

    Args:
        image_processor ([`OpenVLAImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer (adds `<s>`).
        prompt_end_token_id (`int`, *optional*):
            Token appended to every prompt (29871 for OpenVLA's Llama-2 tokenizer); `None` appends nothing.
        norm_stats (`dict`, *optional*):
            OpenVLA-layout statistics; `norm_stats[unnorm_key]["proprio"]` (`q01`/`q99`/`mask`) normalises proprio.
        unnorm_key (`str`, *optional*):
            Key into `norm_stats`.
    """

    def __init__(
        self,
        image_processor: OpenVLAImageProcessor | None = None,
        tokenizer: Any = None,
        prompt_end_token_id: int | None = None,
        norm_stats: Mapping[str, Any] | None = None,
        unnorm_key: str | None = None,
        **kwargs: Any,
    ):
        self.prompt_end_token_id = prompt_end_token_id
        self.norm_stats = dict(norm_stats) if norm_stats else None
        self.unnorm_key = unnorm_key
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> OpenVLAProcessor:
        """Load a processor saved by this class, or the `PrismaticProcessor` files of a released OpenVLA checkpoint.

        For a released checkpoint (its `processor_config.json` names `PrismaticProcessor`), what the published code
        does outside the processor is filled in: `prompt_end_token_id` is the tokenizer's empty word-boundary token
        "▁" (29871 for Llama-2), which `predict_action` appends, and `norm_stats` (for proprio) come from
        `dataset_statistics.json`, else from `config.json`.
        """
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(folder) and _is_released_layout(folder):
            if processor.prompt_end_token_id is None and "prompt_end_token_id" not in kwargs:
                token_id = processor.tokenizer.convert_tokens_to_ids("\u2581")
                if token_id is None or token_id == processor.tokenizer.unk_token_id:
                    raise ValueError(
                        f"The tokenizer of {folder} has no empty word-boundary token '\u2581' (29871 in Llama-2), "
                        "which OpenVLA appends to every prompt; pass `prompt_end_token_id=`."
                    )
                processor.prompt_end_token_id = token_id
            if processor.norm_stats is None and "norm_stats" not in kwargs:
                processor.norm_stats = _released_norm_stats(folder)
        return processor

    @staticmethod
    def prompt(instruction: str) -> str:
        """OpenVLA's prompt for one instruction."""
        return PROMPT_TEMPLATE.format(instruction=instruction.strip().lower())

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput] | None = None,
        text: str | Sequence[str] | None = None,
        proprio: np.ndarray | torch.Tensor | Sequence[Sequence[float]] | None = None,
        wrist_images: ImageInput | Sequence[ImageInput] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Build the model inputs for a batch of observations (one instruction per image)."""
        if images is None or text is None:
            raise ValueError("OpenVLAProcessor needs both `images` and `text` (the instructions).")
        instructions = [text] if isinstance(text, str) else list(text)
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        if pixel_values.shape[0] != len(instructions):
            raise ValueError(f"Got {pixel_values.shape[0]} images for {len(instructions)} instructions.")
        if wrist_images is not None:
            wrist = self.image_processor(wrist_images, return_tensors="pt")["pixel_values"]
            if wrist.shape[0] != pixel_values.shape[0]:
                raise ValueError(f"Got {wrist.shape[0]} wrist images for {pixel_values.shape[0]} images.")
            pixel_values = torch.cat([pixel_values, wrist], dim=1)

        encoded = self.tokenizer([self.prompt(i) for i in instructions], add_special_tokens=True)["input_ids"]
        if self.prompt_end_token_id is not None:
            encoded = [
                ids if ids[-1] == self.prompt_end_token_id else ids + [self.prompt_end_token_id] for ids in encoded
            ]
        length = max(len(ids) for ids in encoded)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad_id] * (length - len(ids)) + ids for ids in encoded], dtype=torch.long)
        attention_mask = torch.tensor(
            [[0] * (length - len(ids)) + [1] * len(ids) for ids in encoded], dtype=torch.long
        )
        data = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        if proprio is not None:
            data["proprio"] = torch.as_tensor(self.normalize_proprio(proprio), dtype=torch.float32)
        return BatchFeature(data, tensor_type=return_tensors)

    def normalize_proprio(self, proprio: np.ndarray | torch.Tensor | Sequence[Sequence[float]]) -> np.ndarray:
        """`[B, P]` proprio -> normalised with `norm_stats[unnorm_key]["proprio"]` when present, else unchanged."""
        values = proprio.detach().cpu().numpy() if isinstance(proprio, torch.Tensor) else np.asarray(proprio)
        values = values.astype(np.float32)
        if values.ndim != 2:
            raise ValueError(f"`proprio` must be [batch, proprio_dim], got shape {values.shape}.")
        if self.norm_stats:
            _, stats = select_norm_stats(self.norm_stats, self.unnorm_key)
            if "proprio" in stats:
                return normalize_actions(values, {"action": stats["proprio"]})
        return values

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "proprio"]


def _is_released_layout(folder: str) -> bool:
    """Whether `folder`'s processor was saved by the published `PrismaticProcessor` (remote code)."""
    path = os.path.join(folder, "processor_config.json")
    if not os.path.isfile(path):
        return os.path.isfile(os.path.join(folder, "preprocessor_config.json"))
    with open(path) as f:
        return json.load(f).get("processor_class") == "PrismaticProcessor"


def _released_norm_stats(folder: str) -> dict[str, Any] | None:
    for name, key in (("dataset_statistics.json", None), ("config.json", "norm_stats")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            data = data.get(key) if key else data
            if data:
                return data
    return None


class PrismaticImageProcessor(OpenVLAImageProcessor):
    """The class name in released OpenVLA `preprocessor_config.json` files, so that they resolve to the native
    processor without remote code: `from_pretrained` returns an [`OpenVLAImageProcessor`]."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> OpenVLAImageProcessor:
        return OpenVLAImageProcessor.from_pretrained(*args, **kwargs)


class PrismaticProcessor(OpenVLAProcessor):
    """The class name in released OpenVLA `processor_config.json` files, so that they resolve to the native
    processor without remote code: `from_pretrained` returns an [`OpenVLAProcessor`]."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> OpenVLAProcessor:
        return OpenVLAProcessor.from_pretrained(*args, **kwargs)
