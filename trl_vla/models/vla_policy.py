"""`VLAPolicy`: any token-action VLA model + its processor as an `ActionPolicy` (see `trl_vla.policy`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from ..action_tokenizer import ActionSpace
from ..policy import ActionPolicy, Generators
from . import openvla  # noqa: F401  (registers OpenVLA with the Auto classes used by `load_vla`)


__all__ = ["VLAPolicy", "as_policy", "load_vla"]


def load_vla(path: str, **kwargs: Any) -> PreTrainedModel:
    """Load a VLA checkpoint (e.g. an OpenVLA one) with `AutoModelForImageTextToText.from_pretrained(path, **kwargs)`."""
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def as_policy(policy: Any, processor: Any = None, **load_kwargs: Any) -> ActionPolicy:
    """The policy-contract object for what a user has at hand.

    Args:
        policy: A policy (`VLAPolicy`, a scripted expert, ...; returned as it is), a VLA model
            (`PreTrainedModel`), or the path of a VLA checkpoint (loaded with `load_vla`, in evaluation mode).
        processor: The model's processor. Defaults to the one saved with the checkpoint (the path, or the model's
            `config._name_or_path` when that is a local directory).
        load_kwargs: With a path, passed to `load_vla` (e.g. `decoding="parallel", chunk_size=8` for a released
            OpenVLA-OFT checkpoint, whose `config.json` does not say).

    Raises:
        TypeError: For anything else, naming what is accepted.
        ValueError: For a model whose processor cannot be found.
    """
    if isinstance(policy, (str, os.PathLike)):
        path = os.fspath(policy)
        return VLAPolicy(
            load_vla(path, **load_kwargs).eval(),
            processor if processor is not None else AutoProcessor.from_pretrained(path),
        )
    if isinstance(policy, PreTrainedModel):
        if processor is None:
            source = getattr(policy.config, "_name_or_path", "")
            if not (source and os.path.isdir(source)):
                raise ValueError(
                    f"No processor for this {type(policy).__name__}: pass `processor=` (the model's own processor), "
                    "or pass the checkpoint's path instead of the model."
                )
            processor = AutoProcessor.from_pretrained(source)
        return VLAPolicy(policy, processor)
    if isinstance(policy, ActionPolicy):
        return policy
    raise TypeError(
        "Expected a policy (action_space, build_inputs, action_logits, sample_actions; e.g. `VLAPolicy`), a VLA "
        f"model (`PreTrainedModel`, with its processor) or a checkpoint path; got {type(policy).__name__}."
    )


class VLAPolicy:
    """The policy contract of a VLA model and its processor.

    The model may be wrapped (DDP, DeepSpeed, PEFT): `action_logits` goes through the wrapper's `forward`, so that
    gradients and hooks work, while `action_space`, `build_inputs` and `sample_actions` use the unwrapped model.
    The model must provide `forward(**inputs, action_token_ids=...) -> output.action_logits`, `sample_actions(inputs,
    temperature, generator)`, `action_space` and `config.use_proprio` / `config.num_images`; the processor must take
    `processor(images=..., text=..., proprio=..., wrist_images=..., return_tensors="pt")`.

    Args:
        model: The (possibly wrapped) VLA model.
        processor: Its processor.
    """

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model
        self.processor = processor
        self._unwrapped: tuple[torch.nn.Module, torch.nn.Module] | None = None

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        # Unwrapping looks up installed packages and walks the modules (about 2 ms a call, twice per decision): done
        # once per wrapped model.
        if self._unwrapped is None or self._unwrapped[0] is not self.model:
            self._unwrapped = (self.model, extract_model_from_parallel(self.model))
        return self._unwrapped[1]

    @property
    def action_space(self) -> ActionSpace:
        return self.unwrapped_model.action_space

    def build_inputs(
        self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch of observations (`"image"`, and `"wrist_image"` / `"proprio"` when the model
        uses them), on the model's device."""
        if len(observations) != len(instructions):
            raise ValueError(f"Got {len(observations)} observations for {len(instructions)} instructions.")
        model = self.unwrapped_model
        config = model.config
        kwargs: dict[str, Any] = {}
        if getattr(config, "num_images", 1) > 1:
            kwargs["wrist_images"] = [_required(obs, "wrist_image") for obs in observations]
        if getattr(config, "use_proprio", False):
            kwargs["proprio"] = np.stack([np.asarray(_required(obs, "proprio"), np.float32) for obs in observations])
        inputs = self.processor(
            images=[_required(obs, "image") for obs in observations],
            text=list(instructions),
            return_tensors="pt",
            **kwargs,
        )
        return {name: tensor.to(model.device) for name, tensor in inputs.items()}

    def action_logits(self, inputs: Mapping[str, torch.Tensor], action_token_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced `[B, A, n_bins]` logits, computed by the (wrapped) model's forward."""
        return self.model(**inputs, action_token_ids=action_token_ids).action_logits

    def sample_actions(
        self, inputs: Mapping[str, torch.Tensor], temperature: float = 1.0, generator: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """`(token_ids [B, A], log_probs [B, A], actions [B, chunk_size, action_dim])`, without gradients."""
        with torch.no_grad():
            return self.unwrapped_model.sample_actions(dict(inputs), temperature=temperature, generator=generator)


def _required(observation: Mapping[str, Any], key: str) -> Any:
    if key not in observation:
        raise KeyError(f"This policy needs observation[{key!r}]; the observation has {sorted(observation)}.")
    return observation[key]
