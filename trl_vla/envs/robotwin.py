"""RoboTwin 2.0 (dual-arm manipulation, https://robotwin-platform.github.io) as a `gymnasium.Env` with `LiberoEnv`'s
observation, info, reset-option and prompt conventions, so that the rollout engine and `VLAOPDTrainer` run on it as on
LIBERO: give the trainer a simulator pool built with `make_robotwin_env` and prompts from `make_robotwin_prompts`.

Conventions (those of OpenVLA-OFT's ALOHA setting, which OFT and SimpleVLA-RL use for RoboTwin 2.0):

* **Action**: 14-D absolute joint targets `[left arm joints (6), left gripper, right arm joints (6), right gripper]`,
  grippers in `[0, 1]` (0 closed, 1 open) — RoboTwin's `take_action(action, action_type="qpos")` format for the default
  `aloha-agilex` embodiment, and the order of its `joint_action["vector"]` observation. A policy predicts chunks of
  `ROBOTWIN_CHUNK_SIZE = 25` actions (350 action tokens per decision); `step` takes one action `[14]` or a chunk
  `[k, 14]`, executes it open-loop (one `take_action` per row, each one step of the episode limit) and renders once,
  at the end. Normalisation is OFT's `BOUNDS` (min/max, every dimension, grippers included): see `bounds_norm_stats`.
* **Observation**: `"image"` the head camera, `"wrist_image"` the *left* wrist camera and `"right_wrist_image"` the
  right one (both only with `wrist_cameras=True`), each `[image_size, image_size, 3]` uint8 (squashed to a square, as
  OFT's `resize_image_for_policy` does), and `"proprio"` the 14-D joint state `[14]` float32 (OFT's ALOHA proprio).
  Two wrist cameras, one `"wrist_image"` key: a policy with `num_images == 2` sees head + left wrist, exactly like a
  LIBERO policy sees agent view + wrist; a three-image policy (OFT's RoboTwin setting: head, left wrist, right wrist)
  additionally reads `"right_wrist_image"`.
* **Success** is RoboTwin's own: `take_action` runs the task's `check_success()` after every physics step and sets
  `eval_success`; the episode terminates with reward 1 when it does, and is truncated after `max_episode_steps`
  actions (default: RoboTwin's per-task evaluation limit, `ROBOTWIN_STEP_LIMITS`).
* **Tasks and seeds**: `task_id` indexes `ROBOTWIN_TASKS` (the 50 RoboTwin 2.0 tasks, alphabetical). Prompt
  `init_state_id = k` is the scene seed `100000 * (1 + seed) + k`, RoboTwin's evaluation seeds for `--seed seed`
  (`script/eval_policy.py`). As in that protocol, with `expert_check=True` (the default) RoboTwin's scripted expert
  first plays the scene, and seeds it cannot solve are skipped (the next seed is tried; `info["scene_seed"]` says
  which one ran). The expert's episode parameters also fill RoboTwin's instruction templates: the episode's instruction
  (`env.instruction`, `info["instruction"]`) is drawn from them deterministically per scene seed
  (`instruction_type="unseen"` as in OFT's RoboTwin evaluation). Without the expert, or when RoboTwin has no template
  for the episode, the instruction is the documented default `ROBOTWIN_DEFAULT_INSTRUCTIONS[task_name]`, which is also
  what `make_robotwin_prompts` puts in the prompt dataset.

Install path (RoboTwin 2.0 needs an NVIDIA GPU with CUDA and Vulkan; it cannot run on a CPU-only machine, and its
assets come only from the Hugging Face Hub):

```bash
git clone https://github.com/RoboTwin-Platform/RoboTwin.git && cd RoboTwin
bash script/_install.sh             # sapien 3.0.0b1, mplib 0.2.1, pytorch3d, the sapien/mplib patches, cuRobo (CUDA)
bash script/_download_assets.sh     # embodiments, objects, textures from the HF Hub dataset TianxingChen/RoboTwin2.0
python script/test_render.py        # must print that rendering works (needs the NVIDIA Vulkan ICD)
export ROBOTWIN_ROOT=$PWD           # or RoboTwinEnv(..., robotwin_root=...)
```

(Newer RoboTwin checkouts name the scripts directory `scripts/`; this module reads RoboTwin's own `CONFIGS_PATH`, so
both layouts work.) RoboTwin is imported lazily, when the first `RoboTwinEnv` is built; when something is missing,
the error lists every missing piece and how to get it (`check_robotwin_install` returns that list). RoboTwin loads its
assets through paths relative to its checkout, so every call into it runs with the working directory switched to
`ROBOTWIN_ROOT` (and switched back after): use one environment per process (the rollout workers), not threads.

Everything else here (task list, prompts, observation/action conversion, normalisation statistics) is pure and works
without RoboTwin.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import glob
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from .base import SimulationError


__all__ = [
    "ROBOTWIN_ACTION_DIM",
    "ROBOTWIN_CHUNK_SIZE",
    "ROBOTWIN_DEFAULT_INSTRUCTIONS",
    "ROBOTWIN_STEP_LIMITS",
    "ROBOTWIN_SUITE",
    "ROBOTWIN_TASKS",
    "RoboTwinEnv",
    "action_chunk",
    "bounds_norm_stats",
    "check_robotwin_install",
    "compute_robotwin_norm_stats",
    "convert_observation",
    "extract_privileged_state",
    "make_robotwin_env",
    "make_robotwin_prompts",
    "robotwin_task_id",
    "to_robotwin_action",
]

ROBOTWIN_SUITE = "robotwin2"
"""The `suite` column of RoboTwin 2.0 prompts."""

ROBOTWIN_ACTION_DIM = 14
"""Dual-arm joint action of the default `aloha-agilex` embodiment: 2 x (6 joints + 1 gripper)."""

ROBOTWIN_CHUNK_SIZE = 25
"""Actions per decision in OpenVLA-OFT's ALOHA setting (`NUM_ACTIONS_CHUNK`), used for RoboTwin 2.0."""

ROBOTWIN_STEP_LIMITS = {
    "adjust_bottle": 400,
    "beat_block_hammer": 400,
    "blocks_ranking_rgb": 1200,
    "blocks_ranking_size": 1200,
    "click_alarmclock": 400,
    "click_bell": 400,
    "dump_bin_bigbin": 600,
    "grab_roller": 400,
    "handover_block": 800,
    "handover_mic": 600,
    "hanging_mug": 900,
    "lift_pot": 400,
    "move_can_pot": 400,
    "move_pillbottle_pad": 400,
    "move_playingcard_away": 400,
    "move_stapler_pad": 400,
    "open_laptop": 700,
    "open_microwave": 1500,
    "pick_diverse_bottles": 400,
    "pick_dual_bottles": 400,
    "place_a2b_left": 400,
    "place_a2b_right": 400,
    "place_bread_basket": 700,
    "place_bread_skillet": 500,
    "place_burger_fries": 500,
    "place_can_basket": 700,
    "place_cans_plasticbox": 800,
    "place_container_plate": 400,
    "place_dual_shoes": 600,
    "place_empty_cup": 500,
    "place_fan": 400,
    "place_mouse_pad": 400,
    "place_object_basket": 700,
    "place_object_scale": 400,
    "place_object_stand": 400,
    "place_phone_stand": 400,
    "place_shoe": 500,
    "press_stapler": 400,
    "put_bottles_dustbin": 1700,
    "put_object_cabinet": 700,
    "rotate_qrcode": 400,
    "scan_object": 500,
    "shake_bottle": 700,
    "shake_bottle_horizontally": 700,
    "stack_blocks_three": 1200,
    "stack_blocks_two": 800,
    "stack_bowls_three": 1200,
    "stack_bowls_two": 900,
    "stamp_seal": 400,
    "turn_switch": 400,
}
"""RoboTwin 2.0's evaluation episode limit per task, in `take_action` calls (its `_eval_step_limit.yml`)."""

ROBOTWIN_TASKS = tuple(sorted(ROBOTWIN_STEP_LIMITS))
"""The 50 RoboTwin 2.0 tasks (module and class names in RoboTwin's `envs/`); `task_id` indexes this tuple."""

ROBOTWIN_DEFAULT_INSTRUCTIONS = {
    "adjust_bottle": "pick up the bottle and hold it upright",
    "beat_block_hammer": "pick up the hammer and hit the block with it",
    "blocks_ranking_rgb": "line up the red, green and blue blocks from left to right",
    "blocks_ranking_size": "line up the three blocks from largest to smallest, left to right",
    "click_alarmclock": "press the button on top of the alarm clock",
    "click_bell": "press the top of the bell",
    "dump_bin_bigbin": "pour the balls from the small bin into the big bin",
    "grab_roller": "grab the roller with both arms",
    "handover_block": "pass the red block from the left arm to the right arm and put it on the blue pad",
    "handover_mic": "pick up the microphone and hand it over to the other arm",
    "hanging_mug": "hang the mug on the rack",
    "lift_pot": "lift the pot with both arms",
    "move_can_pot": "move the can next to the pot",
    "move_pillbottle_pad": "put the pill bottle on the pad",
    "move_playingcard_away": "move the playing card away",
    "move_stapler_pad": "move the stapler onto the colored mat",
    "open_laptop": "open the laptop",
    "open_microwave": "open the microwave",
    "pick_diverse_bottles": "pick up a bottle with each arm",
    "pick_dual_bottles": "pick up both bottles, one with each arm",
    "place_a2b_left": "put the object to the left of the other object",
    "place_a2b_right": "put the object to the right of the other object",
    "place_bread_basket": "put the bread in the basket",
    "place_bread_skillet": "put the bread in the skillet",
    "place_burger_fries": "put the hamburger and the fries on the tray",
    "place_can_basket": "put the can in the basket and lift the basket",
    "place_cans_plasticbox": "put the cans in the plastic box",
    "place_container_plate": "put the container on the plate",
    "place_dual_shoes": "put both shoes in the shoe box with the toes pointing left",
    "place_empty_cup": "put the empty cup on the coaster",
    "place_fan": "put the fan on the colored mat facing the robot",
    "place_mouse_pad": "put the mouse on the colored mat",
    "place_object_basket": "put the object in the basket and move the basket away",
    "place_object_scale": "put the object on the scale",
    "place_object_stand": "put the object on the stand",
    "place_phone_stand": "put the phone on the phone stand",
    "place_shoe": "put the shoe on the mat",
    "press_stapler": "press down on the stapler",
    "put_bottles_dustbin": "put the bottles in the dustbin",
    "put_object_cabinet": "open the drawer and put the object inside",
    "rotate_qrcode": "pick up the QR code board and turn it to face the robot",
    "scan_object": "scan the object with the scanner",
    "shake_bottle": "pick up the bottle and shake it",
    "shake_bottle_horizontally": "pick up the bottle and shake it horizontally",
    "stack_blocks_three": "stack the blue block on the green block and the green block on the red block",
    "stack_blocks_two": "stack the green block on the red block",
    "stack_bowls_three": "stack the three bowls",
    "stack_bowls_two": "stack the two bowls",
    "stamp_seal": "press the stamp onto the colored mat",
    "turn_switch": "flip the switch",
}
"""One instruction per task (this package's wording), used when RoboTwin's per-episode generator is unavailable."""

ROBOTWIN_SEED_STRIDE = 100000
"""RoboTwin's evaluation with `--seed s` starts at scene seed `100000 * (1 + s)`."""


# ------------------------------------------------------------------------------------------------------------------
# Tasks and prompts
# ------------------------------------------------------------------------------------------------------------------


def robotwin_task_id(task_name: str) -> int:
    """Index of `task_name` in `ROBOTWIN_TASKS`, with a suggestion when the name is misspelt."""
    if task_name in ROBOTWIN_STEP_LIMITS:
        return ROBOTWIN_TASKS.index(task_name)
    close = difflib.get_close_matches(str(task_name), ROBOTWIN_TASKS, n=3)
    hint = f" Did you mean {close}?" if close else f" Known tasks: {list(ROBOTWIN_TASKS)}."
    raise ValueError(f"Unknown RoboTwin 2.0 task {task_name!r}.{hint}")


def make_robotwin_prompts(task_names: str | Sequence[str] | None = None, seeds: Sequence[int] = (0,)) -> Any:
    """The prompts dataset of RoboTwin 2.0 episodes, for `VLAOPDTrainer`'s `train_dataset`/`eval_dataset`.

    Args:
        task_names: One task name or several (see `ROBOTWIN_TASKS`); `None` for all 50.
        seeds: Episode seeds `k` per task; the scene of `init_state_id = k` is RoboTwin's evaluation seed
            `100000 * (1 + env seed) + k` (see the module docstring).

    Returns:
        A `datasets.Dataset` with one row per (task, seed) and the columns `suite` (`"robotwin2"`), `task_id` (index
        into `ROBOTWIN_TASKS`), `task_name`, `init_state_id` (the seed) and `instruction` (the task's default
        instruction; the environment draws the episode's own instruction from RoboTwin's templates at reset).
    """
    import datasets

    if task_names is None:
        task_names = ROBOTWIN_TASKS
    elif isinstance(task_names, str):
        task_names = [task_names]
    task_ids = [robotwin_task_id(name) for name in task_names]
    seeds = [int(s) for s in seeds]
    if not task_ids or not seeds:
        raise ValueError("`make_robotwin_prompts` needs at least one task and one seed.")
    if min(seeds) < 0:
        raise ValueError(f"Seeds must be non-negative, got {min(seeds)}.")
    rows = [
        {
            "suite": ROBOTWIN_SUITE,
            "task_id": task_id,
            "task_name": ROBOTWIN_TASKS[task_id],
            "init_state_id": seed,
            "instruction": ROBOTWIN_DEFAULT_INSTRUCTIONS[ROBOTWIN_TASKS[task_id]],
        }
        for task_id in task_ids
        for seed in seeds
    ]
    return datasets.Dataset.from_list(rows)


# ------------------------------------------------------------------------------------------------------------------
# Observation and action conversion (pure)
# ------------------------------------------------------------------------------------------------------------------


def _camera_rgb(raw_obs: Mapping[str, Any], camera: str) -> np.ndarray:
    cameras = raw_obs.get("observation", {})
    if camera not in cameras or "rgb" not in cameras[camera]:
        raise KeyError(
            f"RoboTwin's observation has no {camera!r} RGB image (cameras: {sorted(cameras)}); the task config must "
            "enable `data_type.rgb` and the camera (`camera.collect_head_camera` / `camera.collect_wrist_camera`)."
        )
    return np.asarray(cameras[camera]["rgb"])


def _resize(image: np.ndarray, size: int | None) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"Expected an [H, W, 3] camera image, got shape {image.shape}.")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if size is None or image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    from PIL import Image

    # Squash to a square (no crop), as OFT's `resize_image_for_policy`; Lanczos like its TF resize.
    return np.array(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def convert_observation(
    raw_obs: Mapping[str, Any], image_size: int | None = None, wrist_cameras: bool = True
) -> dict[str, np.ndarray]:
    """RoboTwin's `get_obs()` dict -> this package's observation dict.

    Args:
        raw_obs: `{"observation": {"head_camera": {"rgb": [H, W, 3] uint8}, "left_camera": ..., "right_camera": ...},
            "joint_action": {"vector": [14]}, ...}` as RoboTwin's `_base_task.get_obs` returns it.
        image_size: Side of the square images returned; `None` keeps the camera resolution.
        wrist_cameras: Also return `"wrist_image"` (left wrist) and `"right_wrist_image"` (right wrist).

    Returns:
        `{"image", ["wrist_image", "right_wrist_image"], "proprio"}`: uint8 `[S, S, 3]` images and the float32 joint
        state `[14]` (`[left arm, left gripper, right arm, right gripper]`, the action order).
    """
    obs = {"image": _resize(_camera_rgb(raw_obs, "head_camera"), image_size)}
    if wrist_cameras:
        obs["wrist_image"] = _resize(_camera_rgb(raw_obs, "left_camera"), image_size)
        obs["right_wrist_image"] = _resize(_camera_rgb(raw_obs, "right_camera"), image_size)
    joints = raw_obs.get("joint_action", {})
    if "vector" not in joints:
        raise KeyError(
            "RoboTwin's observation has no `joint_action.vector`; the task config must enable `data_type.qpos`."
        )
    obs["proprio"] = np.asarray(joints["vector"], dtype=np.float32).reshape(-1)
    return obs


def extract_privileged_state(raw_obs: Mapping[str, Any], task_id: int, success: bool) -> dict[str, np.ndarray]:
    """The fixed-shape simulator state of a RoboTwin step (what `info["privileged_state"]` holds).

    Keys: `task_id` `(1,)` int64; `joint_state` `(D,)` float32 (the proprio vector); `left_endpose`, `right_endpose`
    `(7,)` float32 (end-effector position and quaternion, RoboTwin's `endpose`; zeros when the config does not
    record them); `success` `(1,)` float32.
    """
    endpose = raw_obs.get("endpose", {}) or {}
    state = {
        "task_id": np.array([task_id], dtype=np.int64),
        "joint_state": np.asarray(raw_obs.get("joint_action", {}).get("vector", []), dtype=np.float32).reshape(-1),
        "success": np.array([float(success)], dtype=np.float32),
    }
    for side in ("left", "right"):
        pose = np.asarray(endpose.get(f"{side}_endpose", np.zeros(7)), dtype=np.float32).reshape(-1)
        state[f"{side}_endpose"] = pose if pose.shape == (7,) else np.zeros(7, np.float32)
    return state


def action_chunk(action: Any, action_dim: int = ROBOTWIN_ACTION_DIM) -> np.ndarray:
    """One action `[D]` or a chunk `[k, D]` -> a float64 chunk `[k, D]` (k >= 1), checked for shape and NaNs."""
    actions = np.asarray(action, dtype=np.float64)
    if actions.ndim == 1:
        actions = actions[None]
    if actions.ndim != 2 or actions.shape[-1] != action_dim or actions.shape[0] == 0:
        raise ValueError(
            f"RoboTwin takes one {action_dim}-D action or a chunk [k, {action_dim}], got shape {np.shape(action)}."
        )
    if not np.all(np.isfinite(actions)):
        raise ValueError("RoboTwin actions contain NaN or inf.")
    return actions


def to_robotwin_action(action: Any, left_arm_dim: int = 6, right_arm_dim: int = 6) -> np.ndarray:
    """This package's action -> the vector RoboTwin's `take_action(..., action_type="qpos")` takes.

    Both are `[left arm (left_arm_dim), left gripper, right arm (right_arm_dim), right gripper]` absolute joint targets;
    the conversion checks the shape and clips the grippers into RoboTwin's `[0, 1]` range (0 closed, 1 open), which
    un-normalised predictions may leave by a bin's width.
    """
    dim = left_arm_dim + right_arm_dim + 2
    vector = action_chunk(action, dim)
    if vector.shape[0] != 1:
        raise ValueError(f"`to_robotwin_action` converts one action, got a chunk of {vector.shape[0]}.")
    vector = vector[0].copy()
    for gripper in (left_arm_dim, dim - 1):
        vector[gripper] = np.clip(vector[gripper], 0.0, 1.0)
    return vector


# ------------------------------------------------------------------------------------------------------------------
# Normalisation statistics: OFT's BOUNDS (min/max) for RoboTwin, in trl_vla's q01/q99 layout
# ------------------------------------------------------------------------------------------------------------------


def bounds_norm_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Statistics for OFT's `BOUNDS` normalisation, usable by `trl_vla.normalize_actions`/`unnormalize_actions`.

    OpenVLA-OFT normalises ALOHA/RoboTwin actions and proprio to `[-1, 1]` between their min and max (`BOUNDS`), on
    every dimension (its `JOINT_POS_BIMANUAL` mask is all true), where LIBERO uses the 1st/99th percentiles
    (`BOUNDS_Q99`). `trl_vla`'s functions read `q01`/`q99`; this returns a copy of `stats` (one
    `norm_stats[unnorm_key]` entry) whose `q01`/`q99` are the `min`/`max` (for `"action"` and, if present,
    `"proprio"`), whose `mask` defaults to all true, and tagged `"normalization": "bounds"`. The formula is then OFT's.

    Use it on an OFT RoboTwin checkpoint's statistics before storing them as `config.norm_stats[unnorm_key]`:
    without it, its actions would be un-normalised with the percentiles, which are narrower than the bounds.
    """
    if "action" not in stats:
        raise ValueError(
            "Expected one `norm_stats[unnorm_key]` entry (a dict with an 'action' entry), got keys "
            f"{sorted(stats)}; pick the entry first, e.g. `bounds_norm_stats(norm_stats['my_robotwin_key'])`."
        )
    out = copy.deepcopy(dict(stats))
    for key in ("action", "proprio"):
        if key not in out:
            continue
        entry = out[key]
        if not {"min", "max"} <= set(entry):
            raise ValueError(f"norm_stats[...][{key!r}] lacks 'min'/'max', which BOUNDS normalisation needs.")
        low, high = np.asarray(entry["min"], np.float64), np.asarray(entry["max"], np.float64)
        if low.shape != high.shape or np.any(high < low):
            raise ValueError(f"norm_stats[...][{key!r}] has min/max of shapes {low.shape}/{high.shape} or min > max.")
        entry["q01"], entry["q99"] = low.tolist(), high.tolist()
        entry["mask"] = [bool(m) for m in entry.get("mask", [True] * low.shape[0])]
        entry["normalization"] = "bounds"
    return out


def compute_robotwin_norm_stats(dataset: Any, column: str = "action") -> dict[str, Any]:
    """`trl_vla.compute_norm_stats` with RoboTwin's conventions: every dimension normalised (grippers included), BOUNDS.

    Returns one `norm_stats[unnorm_key]` entry, as `bounds_norm_stats` describes.
    """
    from ..action_tokenizer import compute_norm_stats

    first = np.asarray(dataset[column][0])
    return bounds_norm_stats(compute_norm_stats(dataset, column, normalization_mask=[True] * first.shape[-1]))


# ------------------------------------------------------------------------------------------------------------------
# Installation check and lazy import
# ------------------------------------------------------------------------------------------------------------------

_PYTHON_DEPENDENCIES = {
    "sapien": "sapien==3.0.0b1 (`bash script/_install.sh` in the RoboTwin checkout)",
    "mplib": "mplib==0.2.1, patched by `script/_install.sh`",
    "toppra": "toppra (RoboTwin's script/requirements.txt)",
    "transforms3d": "transforms3d==0.4.2 (RoboTwin's script/requirements.txt)",
    "trimesh": "trimesh==4.4.3 (RoboTwin's script/requirements.txt)",
    "open3d": "open3d==0.18.0 (RoboTwin's script/requirements.txt)",
    "cv2": "opencv-python (RoboTwin's script/requirements.txt)",
    "curobo": "NVIDIA cuRobo (needs CUDA): `cd envs && git clone https://github.com/NVlabs/curobo.git && cd curobo && "
    "pip install -e . --no-build-isolation`, as `script/_install.sh` does",
}

_ASSET_DIRS = ("assets/embodiments", "assets/objects", "assets/background_texture")


def _robotwin_root(robotwin_root: str | os.PathLike | None) -> str | None:
    root = robotwin_root if robotwin_root is not None else os.environ.get("ROBOTWIN_ROOT")
    return os.path.abspath(os.path.expanduser(os.fspath(root))) if root else None


def _vulkan_icds() -> list[str]:
    if os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES"):
        return ["(set by VK_ICD_FILENAMES / VK_DRIVER_FILES)"]
    dirs = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
    return [path for d in dirs for path in glob.glob(os.path.join(d, "*.json"))]


def check_robotwin_install(robotwin_root: str | os.PathLike | None = None) -> list[str]:
    """What RoboTwin 2.0 still needs on this machine: one line per missing piece with how to get it (empty if none).

    Checks the checkout (`robotwin_root`, else `$ROBOTWIN_ROOT`), its Hub-downloaded assets, the Python packages its
    code imports (without importing them), a CUDA device (cuRobo plans on it) and a Vulkan driver (SAPIEN renders with
    it). It cannot tell whether the Vulkan driver actually renders: `python script/test_render.py` does.
    """
    missing = []
    root = _robotwin_root(robotwin_root)
    if root is None:
        missing.append(
            "the RoboTwin 2.0 checkout: `git clone https://github.com/RoboTwin-Platform/RoboTwin.git`, then "
            "`export ROBOTWIN_ROOT=/path/to/RoboTwin` (or pass `robotwin_root=`)"
        )
    elif not os.path.isfile(os.path.join(root, "envs", "_base_task.py")):
        missing.append(
            f"a RoboTwin 2.0 checkout at {root!r} (no `envs/_base_task.py` there): point ROBOTWIN_ROOT at the "
            "directory that `git clone https://github.com/RoboTwin-Platform/RoboTwin.git` created"
        )
    else:
        absent = [d for d in _ASSET_DIRS if not os.path.isdir(os.path.join(root, d))]
        if absent:
            missing.append(
                f"RoboTwin's assets ({', '.join(absent)} under {root}): run `bash script/_download_assets.sh` in the "
                "checkout (it downloads the HF Hub dataset `TianxingChen/RoboTwin2.0`: embodiments, objects, "
                "background textures, and fixes the embodiment config paths)"
            )
    for module, how in _PYTHON_DEPENDENCIES.items():
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python package `{module}`: {how}")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU: RoboTwin plans motions with cuRobo on CUDA (and renders with SAPIEN on the GPU)")
    if not _vulkan_icds():
        missing.append(
            "a Vulkan driver (no ICD file in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d): SAPIEN renders with "
            "Vulkan; on NVIDIA install the driver's Vulkan ICD (e.g. `libnvidia-gl-<version>`), then check with "
            "`python script/test_render.py`"
        )
    return missing


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    # RoboTwin opens assets through paths relative to its checkout (`./assets/...`).
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _import_robotwin(robotwin_root: str | os.PathLike | None) -> tuple[str, Any]:
    """Put the RoboTwin checkout on `sys.path` and import its `envs` package, or say exactly what is missing."""
    missing = check_robotwin_install(robotwin_root)
    if missing:
        raise ImportError(
            "RoboTwinEnv needs RoboTwin 2.0, which is not usable here. Missing:\n  - "
            + "\n  - ".join(missing)
            + "\nRoboTwin 2.0 needs an NVIDIA GPU with CUDA and Vulkan, and its assets come from the Hugging Face Hub. "
            "Install it with: git clone https://github.com/RoboTwin-Platform/RoboTwin.git && cd RoboTwin && "
            "bash script/_install.sh && bash script/_download_assets.sh && export ROBOTWIN_ROOT=$PWD "
            "(see the docstring of trl_vla.envs.robotwin and docs/robotwin.md)."
        )
    root = _robotwin_root(robotwin_root)
    for path in (root, os.path.join(root, "description", "utils")):
        if path not in sys.path:
            sys.path.append(path)
    with _working_directory(root):
        envs = importlib.import_module("envs")
    if not os.path.abspath(envs.__file__).startswith(root):
        raise ImportError(
            f"`import envs` resolved to {envs.__file__}, not to the RoboTwin checkout {root}: another top-level "
            "package named `envs` shadows RoboTwin's; remove it from sys.path."
        )
    return root, envs


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# ------------------------------------------------------------------------------------------------------------------
# The environment
# ------------------------------------------------------------------------------------------------------------------


class RoboTwinEnv(gym.Env):
    """One RoboTwin 2.0 task as a `gymnasium.Env` that speaks `LiberoEnv`'s conventions (see the module docstring).

    Args:
        task_name (`str`): A RoboTwin 2.0 task (`ROBOTWIN_TASKS`), e.g. `"beat_block_hammer"`.
        seed (`int`, *optional*, defaults to `0`): RoboTwin's evaluation seed; episode `k` (`init_state_id`) runs
            scene seed `100000 * (1 + seed) + k` (or the next one the expert solves, see `expert_check`).
        max_episode_steps (`int`, *optional*): Actions per episode; defaults to RoboTwin's evaluation limit for the
            task (`ROBOTWIN_STEP_LIMITS`).
        image_size (`int`, *optional*, defaults to `224`): Side of the square images; `None` keeps the camera's own
            resolution (320 x 240 for the default D435 cameras).
        wrist_cameras (`bool`, *optional*, defaults to `True`): Render the two wrist cameras (`"wrist_image"` = left,
            `"right_wrist_image"` = right). Off saves two renders per decision for single-image policies.
        task_config (`str`, *optional*, defaults to `"demo_clean"`): RoboTwin task config (`demo_clean` or
            `demo_randomized`: clutter, textures, lighting), as RoboTwin's `--task_config`.
        instruction_type (`str`, *optional*, defaults to `"unseen"`): Which of RoboTwin's instruction templates
            (`"seen"` or `"unseen"`) the episode instruction is drawn from.
        expert_check (`bool`, *optional*, defaults to `True`): Run RoboTwin's scripted expert on each scene before the
            episode, skip scenes it fails (RoboTwin's evaluation protocol) and fill the instruction templates with its
            episode parameters. Off: faster resets, unsolvable scenes may be drawn, default instructions.
        max_seed_tries (`int`, *optional*, defaults to `20`): Consecutive scene seeds tried before `reset` gives up.
        robotwin_root (`str`, *optional*): The RoboTwin checkout; defaults to `$ROBOTWIN_ROOT`.

    Raises:
        ImportError: naming every missing piece of the RoboTwin installation (see `check_robotwin_install`).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        task_name: str,
        seed: int = 0,
        max_episode_steps: int | None = None,
        image_size: int | None = 224,
        wrist_cameras: bool = True,
        task_config: str = "demo_clean",
        instruction_type: str = "unseen",
        expert_check: bool = True,
        max_seed_tries: int = 20,
        robotwin_root: str | os.PathLike | None = None,
    ):
        robotwin_task_id(task_name)  # an unknown task fails before the (slow) import
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"`max_episode_steps` must be positive, got {max_episode_steps}.")
        if image_size is not None and image_size < 1:
            raise ValueError(f"`image_size` must be positive, got {image_size}.")
        if instruction_type not in ("seen", "unseen"):
            raise ValueError(f"`instruction_type` must be 'seen' or 'unseen', got {instruction_type!r}.")
        if max_seed_tries < 1:
            raise ValueError(f"`max_seed_tries` must be positive, got {max_seed_tries}.")
        self.suite = ROBOTWIN_SUITE
        self.seed_offset = ROBOTWIN_SEED_STRIDE * (1 + int(seed))
        self.image_size = image_size
        self.wrist_cameras = wrist_cameras
        self.instruction_type = instruction_type
        self.expert_check = expert_check
        self.max_seed_tries = max_seed_tries
        self.render_mode = "rgb_array"
        self._max_episode_steps_override = max_episode_steps

        self._root, envs = _import_robotwin(robotwin_root)
        with _working_directory(self._root):
            # Scenes whose objects do not come to rest raise this; RoboTwin's evaluation moves on to the next seed.
            self._unstable_error = importlib.import_module("envs.utils.create_actor").UnStableError
        self._args = self._task_args(envs.CONFIGS_PATH, task_config)
        self._arm_dims = (
            len(self._args["left_embodiment_config"]["arm_joints_name"][0]),
            len(self._args["right_embodiment_config"]["arm_joints_name"][1]),
        )
        self.action_dim = sum(self._arm_dims) + 2
        self._task = None
        self._scene_open = False
        self._episode_over = True
        self._elapsed = 0
        self._num_episodes = 0
        self._last_obs: dict[str, np.ndarray] | None = None
        self.init_state_id: int | None = None
        self.scene_seed: int | None = None
        self._load_task(task_name)

        def image_space(camera_type_key: str) -> gym.spaces.Box:
            if image_size is not None:
                return gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
            camera = self._cameras[self._args["camera"][camera_type_key]]
            return gym.spaces.Box(0, 255, (camera["h"], camera["w"], 3), np.uint8)

        spaces = {
            "image": image_space("head_camera_type"),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32),
        }
        if wrist_cameras:
            spaces["wrist_image"] = spaces["right_wrist_image"] = image_space("wrist_camera_type")
        self.observation_space = gym.spaces.Dict(spaces)
        low = np.full(self.action_dim, -np.inf, np.float32)
        high = np.full(self.action_dim, np.inf, np.float32)
        grippers = [self._arm_dims[0], self.action_dim - 1]
        low[grippers], high[grippers] = 0.0, 1.0
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)

    def _task_args(self, configs_path: str, task_config: str) -> dict[str, Any]:
        """RoboTwin's `setup_demo` keyword arguments, assembled as its `eval_policy.py` does."""
        config_file = os.path.join(configs_path, f"{task_config}.yml")
        if not os.path.isfile(config_file):
            available = sorted(
                f[:-4] for f in os.listdir(configs_path) if f.endswith(".yml") and not f.startswith("_")
            )
            raise ValueError(f"Unknown RoboTwin task config {task_config!r}; available: {available}.")
        args = _load_yaml(config_file)
        embodiments = _load_yaml(os.path.join(configs_path, "_embodiment_config.yml"))
        self._cameras = _load_yaml(os.path.join(configs_path, "_camera_config.yml"))
        embodiment = args["embodiment"]

        def robot_file(name: str) -> str:
            return os.path.join(self._root, embodiments[name]["file_path"])

        if len(embodiment) == 1:
            args["left_robot_file"] = args["right_robot_file"] = robot_file(embodiment[0])
            args["dual_arm_embodied"] = True
        elif len(embodiment) == 3:
            args["left_robot_file"], args["right_robot_file"] = robot_file(embodiment[0]), robot_file(embodiment[1])
            args["embodiment_dis"] = embodiment[2]
            args["dual_arm_embodied"] = False
        else:
            raise ValueError(f"RoboTwin's `embodiment` must list 1 or 3 items, got {embodiment}.")
        for side in ("left", "right"):
            args[f"{side}_embodiment_config"] = _load_yaml(os.path.join(args[f"{side}_robot_file"], "config.yml"))
        head = self._cameras[args["camera"]["head_camera_type"]]
        args["head_camera_h"], args["head_camera_w"] = head["h"], head["w"]
        args["camera"]["collect_wrist_camera"] = self.wrist_cameras
        args["data_type"].update(rgb=True, qpos=True, endpose=True)
        args.update(
            task_config=task_config,
            eval_mode=True,
            eval_video_log=False,
            render_freq=0,
            save_data=False,
            need_plan=True,
        )
        return args

    def _load_task(self, task_name: str) -> None:
        """Instantiate RoboTwin's task class (one instance serves every episode of the task, as in its evaluation)."""
        self._close_scene()
        self.task_id = robotwin_task_id(task_name)
        self.task_name = task_name
        self.max_episode_steps = self._max_episode_steps_override or ROBOTWIN_STEP_LIMITS[task_name]
        self.instruction = ROBOTWIN_DEFAULT_INSTRUCTIONS[task_name]
        self._args["task_name"] = task_name
        with _working_directory(self._root):
            self._task = getattr(importlib.import_module(f"envs.{task_name}"), task_name)()

    # -- RoboTwin calls, always from its checkout directory -------------------------------------------------------

    def _setup(self, scene_seed: int, episode: int) -> None:
        # Open before the call: a setup that fails half-way still has a scene to close (as RoboTwin's evaluation does).
        self._scene_open = True
        with _working_directory(self._root):
            self._task.setup_demo(now_ep_num=episode, seed=scene_seed, is_test=True, **self._args)

    def _close_scene(self, clear_cache: bool = False) -> None:
        if self._scene_open:
            with _working_directory(self._root):
                self._task.close_env(clear_cache=clear_cache)
            self._scene_open = False

    def _expert_solves(self, scene_seed: int, episode: int) -> dict[str, Any] | None:
        """Play RoboTwin's scripted expert on the scene; its episode parameters if it succeeds, else `None`."""
        try:
            self._setup(scene_seed, episode)
            with _working_directory(self._root):
                info = self._task.play_once()
                solved = bool(self._task.plan_success and self._task.check_success())
        except Exception:  # RoboTwin's own evaluation skips a seed on any failure here (unstable scene, planner)
            return None
        finally:
            self._close_scene()
        return dict(info.get("info", {})) if solved else None

    def _episode_instruction(self, episode_params: dict[str, Any] | None, scene_seed: int) -> str:
        default = ROBOTWIN_DEFAULT_INSTRUCTIONS[self.task_name]
        if episode_params is None:
            return default
        with _working_directory(self._root):
            generator = importlib.import_module("generate_episode_instructions")
            descriptions = generator.generate_episode_descriptions(self.task_name, [episode_params], 100)
        choices = descriptions[0].get(self.instruction_type, []) if descriptions else []
        if not choices:
            return default
        return str(np.random.default_rng(scene_seed).choice(choices))

    def _raw_obs(self) -> dict[str, Any]:
        with _working_directory(self._root):
            return self._task.get_obs()

    # -- gymnasium API ----------------------------------------------------------------------------------------------

    def _info(self, raw: Mapping[str, Any], success: bool, env_steps: int) -> dict[str, Any]:
        return {
            "success": bool(success),
            "privileged_state": extract_privileged_state(raw, self.task_id, success),
            "env_steps": int(env_steps),
            "elapsed_steps": self._elapsed,
            "suite": self.suite,
            "task_id": self.task_id,
            "init_state_id": self.init_state_id,
            "instruction": self.instruction,
            "scene_seed": self.scene_seed,
        }

    def _observation(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self._last_obs = convert_observation(raw, self.image_size, self.wrist_cameras)
        return self._last_obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start episode `options["init_state_id"]` (default 0); `options` may also hold `suite` (`"robotwin2"`) and
        `task_id` (index into `ROBOTWIN_TASKS`) to switch task, as `LiberoEnv` does.

        Returns `(obs, info)`; `info` holds `LiberoEnv`'s keys (`success`, `privileged_state`, `env_steps`,
        `elapsed_steps`, `suite`, `task_id`, `init_state_id`) plus `instruction` (this episode's) and `scene_seed`.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        if options.get("suite", self.suite) != self.suite:
            raise ValueError(f"RoboTwinEnv runs the suite {self.suite!r}, not {options['suite']!r}.")
        task_id = int(options.get("task_id", self.task_id))
        if not 0 <= task_id < len(ROBOTWIN_TASKS):
            raise ValueError(
                f"`task_id` {task_id} is out of range: RoboTwin 2.0 has tasks 0..{len(ROBOTWIN_TASKS) - 1}."
            )
        if task_id != self.task_id:
            self._load_task(ROBOTWIN_TASKS[task_id])
        init_state_id = int(options.get("init_state_id", 0))
        if init_state_id < 0:
            raise ValueError(f"`init_state_id` must be non-negative, got {init_state_id}.")
        # RoboTwin's evaluation empties SAPIEN's asset cache every `clear_cache_freq` episodes (memory vs reloads).
        self._num_episodes += 1
        self._close_scene(clear_cache=self._num_episodes % self._args.get("clear_cache_freq", 5) == 0)
        first = self.seed_offset + init_state_id
        for scene_seed in range(first, first + self.max_seed_tries):
            params = None
            if self.expert_check:
                params = self._expert_solves(scene_seed, init_state_id)
                if params is None:
                    continue
            try:
                self._setup(scene_seed, init_state_id)
            except self._unstable_error:
                self._close_scene()
                continue
            break
        else:
            raise RuntimeError(
                f"No usable RoboTwin scene for {self.task_name} among seeds {first}..{first + self.max_seed_tries - 1} "
                "(unstable objects or scenes the scripted expert fails); raise `max_seed_tries` or pick other seeds."
            )
        self._task.step_lim = self.max_episode_steps
        self._elapsed = 0
        self._episode_over = False
        self.init_state_id = init_state_id
        self.scene_seed = scene_seed
        self.instruction = self._episode_instruction(params, scene_seed)
        raw = self._raw_obs()
        return self._observation(raw), self._info(raw, success=False, env_steps=0)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Run one action `[14]` or a chunk `[k, 14]` open-loop (one RoboTwin `take_action` each), stopping early on
        success or at the episode limit; render once, at the end.

        Returns gymnasium's `(observation, reward, terminated, truncated, info)`: reward 1.0 and `terminated` on
        success, `truncated` at the episode limit; `info["env_steps"]` counts the actions executed by this call.
        An exception inside RoboTwin is raised as `trl_vla.envs.libero.SimulationError`, which the rollout pool
        reports as a simulator fault.
        """
        if self._episode_over:
            raise RuntimeError("The episode is over (or was never started); call `reset()` first.")
        targets = [to_robotwin_action(row, *self._arm_dims) for row in action_chunk(action, self.action_dim)]
        num = 0
        try:
            with _working_directory(self._root):
                for target in targets[: self.max_episode_steps - self._elapsed]:
                    self._task.take_action(target, action_type="qpos")
                    self._elapsed += 1
                    num += 1
                    if self._task.eval_success:
                        break
            raw = self._raw_obs()
        except Exception as err:
            # Our inputs were checked above, so this is RoboTwin failing (planner, physics, renderer): a simulator fault
            # that the rollout pool counts as such (it rebuilds the environment), not a policy failure.
            self._episode_over = True
            raise SimulationError(
                f"RoboTwin failed in {self.task_name} (scene seed {self.scene_seed}, action {self._elapsed}): "
                f"{type(err).__name__}: {err}"
            ) from err
        success = bool(self._task.eval_success)
        truncated = not success and self._elapsed >= self.max_episode_steps
        self._episode_over = success or truncated
        return self._observation(raw), float(success), success, truncated, self._info(raw, success, num)

    def render(self) -> np.ndarray:
        """The head-camera frame of the last observation (`[H, W, 3]` uint8)."""
        if self._last_obs is None:
            raise RuntimeError("Nothing rendered yet; call `reset()` first.")
        return self._last_obs["image"]

    @property
    def elapsed_steps(self) -> int:
        """Actions executed since the last reset."""
        return self._elapsed

    def close(self) -> None:
        self._close_scene(clear_cache=True)
        self._episode_over = True


def make_robotwin_env(
    suite: str = ROBOTWIN_SUITE,
    task_id: int = 0,
    image_size: int | None = 224,
    wrist_camera: bool = False,
    cheap_rendering: bool = False,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> RoboTwinEnv:
    """A `RoboTwinEnv` built from `LiberoEnv`'s constructor arguments, for simulator pools that build environments by
    `(suite, task_id, image_size=, wrist_camera=, cheap_rendering=, max_episode_steps=)`.

    `wrist_camera` turns both wrist cameras on (`"wrist_image"` is the left one). `kwargs` go to `RoboTwinEnv` (e.g.
    `seed`, `task_config`, `expert_check`, `robotwin_root`); bind them with `functools.partial`, which stays picklable
    for worker processes.
    """
    if suite != ROBOTWIN_SUITE:
        raise ValueError(f"`make_robotwin_env` builds {ROBOTWIN_SUITE!r} environments, got suite {suite!r}.")
    if cheap_rendering:
        raise ValueError("RoboTwin has no cheap rendering mode; leave `cheap_rendering` off.")
    if not 0 <= task_id < len(ROBOTWIN_TASKS):
        raise ValueError(f"`task_id` {task_id} is out of range: RoboTwin 2.0 has tasks 0..{len(ROBOTWIN_TASKS) - 1}.")
    return RoboTwinEnv(
        ROBOTWIN_TASKS[task_id],
        image_size=image_size,
        wrist_cameras=wrist_camera,
        max_episode_steps=max_episode_steps,
        **kwargs,
    )
