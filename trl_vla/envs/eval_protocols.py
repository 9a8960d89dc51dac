"""The published LIBERO evaluation protocols as presets: what each evaluation feeds the model and does with its actions.

`evaluate_policy(protocol=...)` and `examples/eval_libero.py --protocol` take one of:

* `native` (default): this repository's evaluation, unchanged: 128 px camera, the image as `LiberoEnv` renders it
  (rotated 180 degrees) handed to the model's processor, actions executed as the model emits them (its own
  `unnorm_key`, the whole chunk open loop), 10 wait steps, `MAX_EPISODE_STEPS` per suite.
* `openvla`: OpenVLA's `experiments/robot/libero/run_libero_eval.py`: 256 px camera, rotation, JPEG round trip
  (quality 95) then Lanczos-3 resize to 224, the 90%-area centre crop rescaled back to 224 (`center_crop=True`, the
  default there), one action per query, gripper `[0, 1] -> [-1, 1]`, binarised with `sign`, sign flipped;
  `unnorm_key` the suite's name, or `<suite>_no_noops` when the checkpoint only has that one.
* `oft`: OpenVLA-OFT's `run_libero_eval.py`: the same images (the wrist camera too, for two-image models) and
  gripper handling, 8 actions of each chunk executed open loop (`num_open_loop_steps`).
* `simplevla_rl`: SimpleVLA-RL's LIBERO rollout (`verl/workers/rollout/rob_rollout.py`): the same images and gripper
  handling, the whole chunk (`action_chunks_len=8`) executed open loop, and 512 environment steps for every suite.

All four wait 10 no-op steps (`[0] * 6 + [-1]`) after setting the init state. The image and gripper transforms are
pure numpy / PIL re-statements of the published TensorFlow ones; `tests/test_eval_protocols.py` compares them with
outputs of the published functions.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .libero import MAX_EPISODE_STEPS, NUM_WAIT_STEPS


__all__ = [
    "EVAL_PROTOCOLS",
    "EvalProtocol",
    "ProtocolPolicy",
    "center_crop_and_resize",
    "get_protocol",
    "jpeg_round_trip",
    "postprocess_gripper",
    "resize_lanczos",
    "resolve_unnorm_key",
]


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """What one LIBERO evaluation feeds the model and does with its actions.

    Attributes:
        name: The preset's name.
        image_size: Camera resolution rendered by the simulator.
        rotate_180: Whether the model sees the camera image rotated by 180 degrees (`LiberoEnv` always renders it
            so; `False` would turn it back).
        jpeg_quality: JPEG round trip (encode at this quality, 4:2:0 chroma, decode) before resizing; `None`: none.
        resize_to: Resize the (square) image to this size before the model's processor; `None`: leave it to the
            processor.
        resize_filter: Filter of that resize (`"lanczos"`: PIL's Lanczos-3, antialiased when downsampling).
        center_crop_scale: Area fraction of the centre crop (side `sqrt(scale)`), bilinearly rescaled back to
            `resize_to` (or the image size); `None`: no crop.
        gripper_normalize: Map the gripper dimension from `[0, 1]` to `[-1, 1]` (`2 x - 1`).
        gripper_binarize: Then binarise it with `sign` (0 stays 0).
        gripper_invert: Then flip its sign (the OpenVLA data loader's 1 = open to LIBERO's -1 = open).
        open_loop_steps: Actions of each predicted chunk executed before the next query; `None`: the whole chunk.
        num_wait_steps: No-op steps after setting the init state.
        max_episode_steps: Environment steps per episode after the wait steps, for every suite; `None`: the suite's
            `MAX_EPISODE_STEPS`.
        unnorm_key_from_suite: Un-normalise actions with the suite's statistics (`<suite>`, or `<suite>_no_noops`
            when only that one exists) instead of the model's default `unnorm_key`.
        wrist_camera: Render the wrist camera when the model takes a second image.
        reference: Where the published protocol is defined.
    """

    name: str
    image_size: int = 128
    rotate_180: bool = True
    jpeg_quality: int | None = None
    resize_to: int | None = None
    resize_filter: str = "lanczos"
    center_crop_scale: float | None = None
    gripper_normalize: bool = False
    gripper_binarize: bool = False
    gripper_invert: bool = False
    open_loop_steps: int | None = None
    num_wait_steps: int = NUM_WAIT_STEPS
    max_episode_steps: int | None = None
    unnorm_key_from_suite: bool = False
    wrist_camera: bool = False
    reference: str = ""

    @property
    def is_native(self) -> bool:
        """Whether the model gets the environment's images and its actions are executed as they are."""
        return (
            self.rotate_180
            and self.jpeg_quality is None
            and self.resize_to is None
            and self.center_crop_scale is None
            and not (self.gripper_normalize or self.gripper_binarize or self.gripper_invert)
            and not self.unnorm_key_from_suite
        )

    def episode_steps(self, suite: str) -> int:
        """The episode limit on `suite` (environment steps after the wait steps)."""
        if self.max_episode_steps is not None:
            return self.max_episode_steps
        return MAX_EPISODE_STEPS[suite]

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """The image the model's processor gets, from `LiberoEnv`'s (`[H, W, 3]` uint8, already rotated)."""
        image = np.asarray(image)
        if not self.rotate_180:
            image = image[::-1, ::-1]
        if self.jpeg_quality is not None:
            image = jpeg_round_trip(image, self.jpeg_quality)
        if self.resize_to is not None and image.shape[:2] != (self.resize_to, self.resize_to):
            if self.resize_filter != "lanczos":
                raise ValueError(f"Unknown `resize_filter` {self.resize_filter!r}; only 'lanczos' is supported.")
            image = resize_lanczos(image, self.resize_to)
        if self.center_crop_scale is not None:
            image = center_crop_and_resize(image, self.center_crop_scale)
        return np.ascontiguousarray(image)

    def postprocess_actions(self, actions: np.ndarray) -> np.ndarray:
        """The actions executed in LIBERO, from the model's un-normalised ones (`[..., 7]`)."""
        return postprocess_gripper(actions, self.gripper_normalize, self.gripper_binarize, self.gripper_invert)


_OPENVLA_FAMILY = {
    "image_size": 256,
    "jpeg_quality": 95,
    "resize_to": 224,
    "center_crop_scale": 0.9,
    "gripper_normalize": True,
    "gripper_binarize": True,
    "gripper_invert": True,
    "unnorm_key_from_suite": True,
}

EVAL_PROTOCOLS: dict[str, EvalProtocol] = {
    "native": EvalProtocol(name="native", reference="trl_vla (this repository's `LiberoEnv` defaults)"),
    "openvla": EvalProtocol(
        name="openvla",
        open_loop_steps=1,
        reference="openvla/openvla experiments/robot/libero/run_libero_eval.py",
        **_OPENVLA_FAMILY,
    ),
    "oft": EvalProtocol(
        name="oft",
        open_loop_steps=8,
        wrist_camera=True,
        reference="moojink/openvla-oft experiments/robot/libero/run_libero_eval.py",
        **_OPENVLA_FAMILY,
    ),
    "simplevla_rl": EvalProtocol(
        name="simplevla_rl",
        open_loop_steps=None,
        max_episode_steps=512,
        reference="PRIME-RL/SimpleVLA-RL verl/workers/rollout/rob_rollout.py",
        **_OPENVLA_FAMILY,
    ),
}
"""The presets by name."""


def get_protocol(protocol: str | EvalProtocol) -> EvalProtocol:
    """The `EvalProtocol` named `protocol` (an `EvalProtocol` is returned as it is); `ValueError` for unknown names."""
    if isinstance(protocol, EvalProtocol):
        return protocol
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; choose one of {list(EVAL_PROTOCOLS)}.")
    return EVAL_PROTOCOLS[protocol]


# ----------------------------------------------------------------------------------------------------------------------
# Image and gripper transforms
# ----------------------------------------------------------------------------------------------------------------------


def jpeg_round_trip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """Encode `[H, W, 3]` uint8 as a baseline JPEG (4:2:0 chroma, as TensorFlow's `encode_jpeg` defaults) and decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """Resize `[H, W, 3]` uint8 to `[size, size, 3]` with an antialiased Lanczos-3 filter (PIL's `LANCZOS`)."""
    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.Resampling.LANCZOS))


def center_crop_and_resize(image: np.ndarray, scale: float = 0.9, size: int | None = None) -> np.ndarray:
    """Crop the centre `sqrt(scale)` of each side of `[H, W, 3]` uint8 and resize it bilinearly to `size` (default
    the input's height and width; must be square then).

    Restates TensorFlow's `crop_and_resize` with a normalised box (corner-aligned bilinear sampling: output pixel `i`
    of `n` samples input coordinate `y1 (H - 1) + i (y2 - y1) (H - 1) / (n - 1)`), computed in float32 on `x / 255`,
    clipped to [0, 1] and converted back with `convert_image_dtype`'s `floor(x * 255.5)`.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    out_h, out_w = (height, width) if size is None else (size, size)
    side = np.float32(np.clip(np.sqrt(np.float32(scale)), 0, 1))
    offset = (np.float32(1) - side) / np.float32(2)
    start, end = offset, offset + side
    pixels = image.astype(np.float32) * np.float32(1.0 / 255.0)

    def coordinates(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = (end - start) * np.float32(n_in - 1) / np.float32(n_out - 1)
        coords = start * np.float32(n_in - 1) + np.arange(n_out, dtype=np.float32) * step
        low = np.floor(coords)
        high = np.minimum(np.ceil(coords), n_in - 1).astype(np.int64)
        return low.astype(np.int64), high, (coords - low).astype(np.float32)

    y0, y1, dy = coordinates(out_h, height)
    x0, x1, dx = coordinates(out_w, width)
    dx = dx[None, :, None]
    top = pixels[y0][:, x0] + (pixels[y0][:, x1] - pixels[y0][:, x0]) * dx
    bottom = pixels[y1][:, x0] + (pixels[y1][:, x1] - pixels[y1][:, x0]) * dx
    out = top + (bottom - top) * dy[:, None, None]
    out = np.clip(out, 0, 1) * np.float32(255.5)
    return np.clip(out, 0, 255).astype(np.uint8)


def postprocess_gripper(
    actions: np.ndarray, normalize: bool = True, binarize: bool = True, invert: bool = True
) -> np.ndarray:
    """The gripper (last) dimension of `actions` `[..., D]` as the OpenVLA-family evaluations execute it.

    `normalize`: `[0, 1] -> [-1, 1]` (`2 x - 1`); `binarize`: `sign` (exactly 0 stays 0); `invert`: flip the sign.
    Returns a copy (float32 for float32 input); the other dimensions are unchanged.
    """
    actions = np.array(actions, copy=True)
    gripper = actions[..., -1]
    if normalize:
        gripper = 2 * gripper - 1
    if binarize:
        gripper = np.sign(gripper)
    if invert:
        gripper = -gripper
    actions[..., -1] = gripper
    return actions


def resolve_unnorm_key(suite: str, norm_stats: Mapping[str, Any] | None) -> str | None:
    """The published evaluations' `unnorm_key`: `suite`, or `f"{suite}_no_noops"` when only that one exists.

    `None` when the model has no statistics (nothing to choose); `ValueError` when neither key exists.
    """
    if not norm_stats:
        return None
    key = suite
    if key not in norm_stats and f"{key}_no_noops" in norm_stats:
        key = f"{key}_no_noops"
    if key not in norm_stats:
        raise ValueError(
            f"The model has no action statistics for {suite!r} (nor {suite + '_no_noops'!r}); it has "
            f"{sorted(norm_stats)}. Evaluate with protocol='native' to use the model's default `unnorm_key`."
        )
    return key


# ----------------------------------------------------------------------------------------------------------------------
# The protocol around a policy
# ----------------------------------------------------------------------------------------------------------------------


class ProtocolPolicy:
    """A policy (see `trl_vla.policy`) whose observations and actions go through an `EvalProtocol`.

    `build_inputs` hands the inner policy the protocol's images (`image` and `wrist_image`); `sample_actions`
    un-normalises with the protocol's `unnorm_key` (for a `VLAPolicy` whose model has `norm_stats`) and post-processes
    the gripper. `action_logits` and `action_space` are the inner policy's.

    Args:
        policy: The inner policy.
        protocol: The protocol (or its name).
        suite: The LIBERO suite evaluated (chooses the `unnorm_key`).
    """

    def __init__(self, policy: Any, protocol: str | EvalProtocol, suite: str):
        self.policy = policy
        self.protocol = get_protocol(protocol)
        self.suite = suite
        self.unnorm_key = None
        if self.protocol.unnorm_key_from_suite:
            config = getattr(self._model, "config", None)
            self.unnorm_key = resolve_unnorm_key(suite, getattr(config, "norm_stats", None))

    @property
    def _model(self) -> Any:
        return getattr(self.policy, "unwrapped_model", None)

    @property
    def action_space(self) -> Any:
        return self.policy.action_space

    def build_inputs(self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str]) -> Any:
        transformed = []
        for observation in observations:
            observation = dict(observation)
            for key in ("image", "wrist_image"):
                if key in observation:
                    observation[key] = self.protocol.preprocess_image(observation[key])
            transformed.append(observation)
        processor = getattr(self.policy, "processor", None)
        if self.unnorm_key is None or not hasattr(processor, "unnorm_key"):
            return self.policy.build_inputs(transformed, instructions)
        previous = processor.unnorm_key  # proprio statistics follow the same key
        processor.unnorm_key = self.unnorm_key
        try:
            return self.policy.build_inputs(transformed, instructions)
        finally:
            processor.unnorm_key = previous

    def action_logits(self, inputs: Any, action_token_ids: Any) -> Any:
        return self.policy.action_logits(inputs, action_token_ids)

    def sample_actions(self, inputs: Any, temperature: float = 1.0, generator: Any = None) -> tuple[Any, Any, Any]:
        if self.unnorm_key is not None:
            import torch

            with torch.no_grad():
                token_ids, log_probs, actions = self._model.sample_actions(
                    dict(inputs), temperature=temperature, generator=generator, unnorm_key=self.unnorm_key
                )
        else:
            token_ids, log_probs, actions = self.policy.sample_actions(inputs, temperature, generator)
        return token_ids, log_probs, self.protocol.postprocess_actions(np.asarray(actions))
