"""Image processor and processor of OpenVLA: camera images + instructions (+ proprio) -> the model's inputs."""

from __future__ import annotations

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


__all__ = ["OpenVLAImageProcessor", "OpenVLAProcessor", "PROMPT_TEMPLATE"]

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
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 224,
        means: Sequence[Sequence[float]] | None = None,
        stds: Sequence[Sequence[float]] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.means = [list(m) for m in (means if means is not None else [DINO_MEAN, SIGLIP_MEAN])]
        self.stds = [list(s) for s in (stds if stds is not None else [DINO_STD, SIGLIP_STD])]
        if len(self.means) != len(self.stds) or len(self.means) not in (1, 2):
            raise ValueError(
                f"Give one or two (fused) normalisations, got {len(self.means)} means, {len(self.stds)} stds."
            )

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
