"""Demonstrations from the privileged scripted LIBERO expert, as a `datasets.Dataset`.

The expert acts from the privileged state; the dataset records what a student sees (the agent-view image as
`LiberoEnv` renders it, oriented as in the OpenVLA LIBERO evaluation, and the proprioception) with the expert's
continuous action, and optionally the expert's open-loop plan from every frame (`action_chunk`): the chunk the same
expert, as an OPD teacher, scores highest, so that SFT on the plans and OPD against the expert teach the same targets
(`benchmarks/teacher_consistency.py` measures how far the executed actions are from them). It feeds
`trl_vla.compute_norm_stats`, SFT baselines, and `save_to_disk` / `push_to_hub`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .scripted_libero import ScriptedLiberoExpert, plan_actions, supported_tasks


__all__ = ["collect_demonstrations", "demonstration_features"]


def demonstration_features(
    image_size: int = 128, proprio_dim: int = 8, plan_chunk_size: int | None = None, wrist_camera: bool = False
) -> Any:
    """The `datasets.Features` of `collect_demonstrations`' output (with `wrist_image` for `wrist_camera`, and
    `action_chunk` when `plan_chunk_size` is given)."""
    import datasets

    plan = {} if plan_chunk_size is None else {"action_chunk": datasets.Array2D((plan_chunk_size, 7), "float32")}
    wrist = {"wrist_image": datasets.Image()} if wrist_camera else {}
    return datasets.Features(
        {
            "image": datasets.Image(),
            **wrist,
            "proprio": datasets.Sequence(datasets.Value("float32"), length=proprio_dim),
            "instruction": datasets.Value("string"),
            "action": datasets.Sequence(datasets.Value("float32"), length=7),
            "episode_index": datasets.Value("int64"),
            "frame_index": datasets.Value("int64"),
            "task_id": datasets.Value("int64"),
            "init_state_id": datasets.Value("int64"),
            "success": datasets.Value("bool"),
            **plan,
        }
    )


def collect_demonstrations(
    suite: str,
    task_ids: Sequence[int] | None = None,
    episodes_per_task: int = 50,
    image_size: int = 128,
    init_state_ids: Sequence[int] | None = None,
    keep_failures: bool = False,
    plan_chunk_size: int | None = None,
    progress: bool = True,
    num_envs: int = 2,
    **env_kwargs: Any,
) -> Any:
    """Roll out the scripted expert in `LiberoEnv` (with the rollout engine, `num_envs` simulator workers) and record
    every frame.

    Args:
        suite: LIBERO suite, e.g. `"libero_object"`.
        task_ids: Tasks to record (default: every task the expert supports in `suite`).
        episodes_per_task: Episodes per task; episode `k` starts from init state `init_state_ids[k]`
            (default: `k % 50`).
        image_size: Side of the rendered agent-view image.
        init_state_ids: Init states to use, cycled through.
        keep_failures: Keep the frames of failed episodes too (their rows have `success=False`). Episodes the
            simulator faulted on are never kept.
        plan_chunk_size: Also record, per frame, the expert's open-loop plan of this many actions from that frame's
            state (`action_chunk`, `[plan_chunk_size, 7]`, its first action the executed one). `VLASFTTrainer`
            learns these chunks instead of the next executed actions: the targets the scripted OPD teacher of a
            student with this chunk size agrees with.
        progress: Show a progress bar over episodes.
        num_envs: Simulator workers (`trl_vla.rollout.make_env_pool`; 0 runs the simulator in this process).
        **env_kwargs: Passed on to `LiberoEnv` (e.g. `wrist_camera`, `max_episode_steps`, `cheap_rendering`).

    Returns:
        A `datasets.Dataset` with one row per frame: `image` (HxWx3 uint8, a `datasets.Image`), `wrist_image` (with
        `wrist_camera=True` in `env_kwargs`), `proprio`,
        `instruction`, `action` (the continuous 7-D action executed, in LIBERO's controller units),
        `episode_index`, `frame_index`, `task_id`, `init_state_id`, `success` (of the whole episode), and
        `action_chunk` with `plan_chunk_size`.
    """
    import datasets

    from ..envs.libero import make_prompts
    from ..rollout import collect_rollouts, make_env_pool

    task_ids = list(supported_tasks(suite) if task_ids is None else task_ids)
    unsupported = [t for t in task_ids if t not in supported_tasks(suite)]
    if unsupported:
        raise ValueError(
            f"The scripted expert does not support tasks {unsupported} of {suite}; supported: {list(supported_tasks(suite))}."
        )
    if episodes_per_task < 1:
        raise ValueError(f"`episodes_per_task` must be positive, got {episodes_per_task}.")
    if plan_chunk_size is not None and plan_chunk_size < 1:
        raise ValueError(f"`plan_chunk_size` must be positive, got {plan_chunk_size}.")

    starts = [
        int(init_state_ids[k % len(init_state_ids)]) if init_state_ids else k % 50 for k in range(episodes_per_task)
    ]
    prompts = datasets.concatenate_datasets([make_prompts(suite, [task_id], starts) for task_id in task_ids])
    policy = _ExpertPolicy(ScriptedLiberoExpert(suite))
    with make_env_pool(num_workers=num_envs, image_size=image_size, **env_kwargs) as envs:
        rollout = collect_rollouts(policy, envs, prompts, temperature=0.0, progress=progress)

    wrist_camera = bool(env_kwargs.get("wrist_camera", False))
    columns: dict[str, list] = {
        name: [] for name in demonstration_features(plan_chunk_size=plan_chunk_size, wrist_camera=wrist_camera)
    }
    proprio_dim, episode_index = None, 0
    for e, prompt in enumerate(rollout.prompts):
        success = bool(rollout.success[e])
        if rollout.fault[e] or not (success or keep_failures):
            continue
        for frame_index, observation in enumerate(rollout.observations[e]):
            proprio = np.asarray(observation["proprio"], np.float32)
            proprio_dim = len(proprio)
            columns["image"].append(np.asarray(observation["image"], np.uint8))
            if wrist_camera:
                columns["wrist_image"].append(np.asarray(observation["wrist_image"], np.uint8))
            columns["proprio"].append(proprio)
            columns["instruction"].append(rollout.instructions[e])
            columns["action"].append(rollout.actions[e, frame_index, 0])
            columns["episode_index"].append(episode_index)
            columns["frame_index"].append(frame_index)
            columns["task_id"].append(int(prompt["task_id"]))
            columns["init_state_id"].append(int(prompt["init_state_id"]))
            columns["success"].append(success)
            if plan_chunk_size is not None:
                columns["action_chunk"].append(plan_actions(observation["privileged_state"], plan_chunk_size))
        episode_index += 1
    features = demonstration_features(
        image_size, proprio_dim if proprio_dim is not None else 8, plan_chunk_size, wrist_camera
    )
    return datasets.Dataset.from_dict(columns, features=features)


class _ExpertPolicy:
    """The scripted expert as a rollout policy that executes its continuous action (its tokens, which a rollout
    records, decode to the centre of that action's bin)."""

    def __init__(self, expert: ScriptedLiberoExpert):
        self.expert = expert
        self.action_space = expert.action_space

    def build_inputs(self, observations, instructions=None):
        return self.expert.build_inputs(observations, instructions)

    def sample_actions(self, inputs, temperature: float = 0.0, generator=None):
        token_ids, log_probs, _ = self.expert.sample_actions(inputs, temperature=0.0)
        actions = np.stack([self.expert.action(query.state) for query in inputs])[:, None]
        return token_ids, log_probs, actions.astype(np.float32)
