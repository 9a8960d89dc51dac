"""Success-rate evaluation of a policy on LIBERO under the standard protocol, and forgetting on held-out tasks.

The protocol is OpenVLA's LIBERO evaluation (as SimpleVLA-RL and VLA-OPD report it): episode `k` of a task starts
from the task's fixed init state `k` (`k = 0 .. episodes_per_task - 1`, or given `init_state_ids`), the simulator first runs its no-op wait
steps, the policy then acts for at most the suite's episode limit, and an episode succeeds when the task's goal
predicate holds. Actions are greedy (temperature 0) unless asked otherwise. `LiberoEnv` owns the init states, the
wait steps and the limits; this module only chooses the prompts, runs them and counts. `protocol=` reproduces one of
the published evaluations' preprocessing and action handling instead (`trl_vla.envs.eval_protocols`).

Results are plain dicts of JSON types, so `evaluate.save(path, **results)` logs them (no Hub access).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .policy import ActionPolicy


__all__ = [
    "HELD_OUT_TASKS",
    "evaluate_policy",
    "evaluate_tasks",
    "forgetting_report",
    "format_success",
    "wilson_interval",
]

HELD_OUT_TASKS: dict[str, tuple[int, ...]] = {"libero_object": (8, 9), "libero_spatial": (8, 9)}
"""Held-out tasks for the forgetting measurement. VLA-OPD holds out 2 `libero_object` and 2 `libero_spatial` tasks
without naming them; these are the last two of each suite (train on the others)."""


def wilson_interval(successes: int, episodes: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a success rate: `(low, high)` in [0, 1], for `successes` out of `episodes`.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or `episodes` successes: 0/16 gives
    (0.0, 0.19), 8/16 (0.28, 0.72).
    """
    if episodes < 1:
        raise ValueError(f"`episodes` must be positive, got {episodes}.")
    if not 0 <= successes <= episodes:
        raise ValueError(f"`successes` must be in [0, {episodes}], got {successes}.")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = successes / episodes
    denominator = 1 + z * z / episodes
    centre = (rate + z * z / (2 * episodes)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / episodes + z * z / (4 * episodes * episodes)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def format_success(successes: int, episodes: int) -> str:
    """`"37.5% [18.5, 61.4] (6/16)"`: a success rate with its 95% Wilson interval, in percent."""
    low, high = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({successes}/{episodes})"


def evaluate_policy(
    policy: ActionPolicy | Any,
    suite: str,
    task_ids: Sequence[int] | None = None,
    episodes_per_task: int = 50,
    seed: int = 0,
    envs: Any = None,
    num_envs: int = 2,
    video_dir: str | None = None,
    temperature: float = 0.0,
    max_episode_steps: int | None = None,
    image_size: int | None = None,
    max_failure_videos: int = 2,
    progress: bool = True,
    init_state_ids: Sequence[int] | None = None,
    open_loop_steps: int | None = None,
    processor: Any = None,
    protocol: str | Any = "native",
) -> dict[str, Any]:
    """Roll `policy` out on LIBERO under the standard protocol and report its success rate per task and overall.

    Args:
        policy: Anything honouring the policy contract (`trl_vla.models.VLAPolicy`, a scripted expert, ...), a VLA
            model (with `processor`, or saved with its processor) or a checkpoint path (see
            `trl_vla.models.as_policy`; anything else raises a `TypeError`).
        suite: LIBERO suite, e.g. `"libero_object"`.
        task_ids: Tasks of the suite to evaluate (default: all).
        episodes_per_task: Episodes per task, from init states `0 .. episodes_per_task - 1` (at most 50).
        seed: Seeds the policy's sampling (when `temperature > 0`) and the simulator; the same seed gives the same
            results.
        envs: A simulator pool (`trl_vla.rollout.make_env_pool`) to reuse; by default one with `num_envs` workers is
            created and closed.
        num_envs: Simulator workers when `envs` is not given (0 steps the simulator in this process).
        video_dir: Save videos of up to `max_failure_videos` failed episodes per task there (`.mp4`; greedy
            evaluations replay them with a frame per env step, sampled ones keep a frame per decision).
        temperature: Sampling temperature; 0 (default) is greedy, as the standard evaluation.
        max_episode_steps: Override of the suite's episode limit (default: the protocol's).
        image_size: Camera resolution when `envs` is not given (default: the protocol's, 128 for `native`).
        max_failure_videos: Failure videos saved per task.
        progress: Show a progress bar.
        init_state_ids: The init states to start from, one episode each per task, instead of
            `0 .. episodes_per_task - 1` (e.g. init states a training run never saw).
        open_loop_steps: Actions of each predicted chunk to execute before the next decision (default: the
            protocol's; the whole chunk for `native`), as in training (`open_loop_steps` of the trainers' configs).
        processor: The processor of a VLA model given as `policy`.
        protocol: A published LIBERO evaluation to reproduce (`trl_vla.envs.eval_protocols`): `"native"` (default;
            this repository's), `"openvla"`, `"oft"` or `"simplevla_rl"`, or an `EvalProtocol`. It sets the camera
            resolution, the images the model gets (JPEG round trip, Lanczos resize to 224, 90%-area centre crop),
            the gripper post-processing, the `unnorm_key` (the suite's), the open-loop steps, the wait steps and the
            episode limit; the explicit arguments above override it. With `envs` given, the pool's own camera
            resolution and wait steps are used.

    Returns:
        A dict of JSON types: `suite`, `protocol` (its name), `task_ids`, `init_state_ids`, `episodes_per_task`,
        `seed`, `temperature`,
        `success_rate` (over all episodes) with its 95% Wilson interval `success_interval`, `num_episodes`,
        `num_successes`, `mean_episode_length` (policy steps), `per_task` (a list of
        `{"task_id", "instruction", "success_rate", "successes"}`), `videos` (paths) and `runtime_s`.
    """
    from .envs.eval_protocols import ProtocolPolicy, get_protocol
    from .envs.libero import NUM_WAIT_STEPS, make_prompts
    from .models import as_policy
    from .rollout import collect_rollouts, make_env_pool

    protocol = get_protocol(protocol)  # raises on unknown names
    policy = as_policy(policy, processor)
    env_kwargs: dict[str, Any] = {"image_size": protocol.image_size if image_size is None else image_size}
    if protocol.num_wait_steps != NUM_WAIT_STEPS:
        env_kwargs["num_wait_steps"] = protocol.num_wait_steps
    config = getattr(getattr(policy, "unwrapped_model", None), "config", None)
    if protocol.wrist_camera and getattr(config, "num_images", 1) > 1:
        env_kwargs["wrist_camera"] = True
    if not protocol.is_native:
        policy = ProtocolPolicy(policy, protocol, suite)
    if max_episode_steps is None and protocol.max_episode_steps is not None:
        max_episode_steps = protocol.max_episode_steps
    if open_loop_steps is None:
        open_loop_steps = protocol.open_loop_steps

    if init_state_ids is None:
        if not 1 <= episodes_per_task <= 50:
            raise ValueError(
                f"`episodes_per_task` must be in [1, 50] (LIBERO has 50 fixed init states per task), got "
                f"{episodes_per_task}."
            )
        init_state_ids = range(episodes_per_task)
    init_state_ids = [int(i) for i in init_state_ids]
    if temperature < 0:
        raise ValueError(f"`temperature` must be non-negative (0 is greedy), got {temperature}.")
    prompts = make_prompts(suite, task_ids, init_state_ids)  # raises on unknown suites, tasks and init states
    owns_envs = envs is None
    if owns_envs:
        envs = make_env_pool(num_workers=num_envs, **env_kwargs)
    start = time.perf_counter()
    rollout_kwargs = {
        "temperature": temperature,
        "max_episode_steps": max_episode_steps,
        "seed": seed,
        "open_loop_steps": open_loop_steps,
    }
    try:
        rollout = collect_rollouts(policy, envs, prompts, progress=progress, **rollout_kwargs)
        videos = _failure_videos(policy, envs, prompts, rollout, video_dir, max_failure_videos, rollout_kwargs)
    finally:
        if owns_envs:
            envs.close()
    successes = [bool(s) for s in rollout.success.tolist()]
    lengths = [int(n) for n in rollout.env_steps.tolist()]

    per_task = []
    for task_id in dict.fromkeys(prompts["task_id"]):
        episodes = [i for i, t in enumerate(prompts["task_id"]) if t == task_id]
        task_successes = [successes[i] for i in episodes]
        per_task.append(
            {
                "task_id": int(task_id),
                "instruction": prompts[episodes[0]]["instruction"],
                "success_rate": sum(task_successes) / len(task_successes),
                "successes": task_successes,
            }
        )
    return {
        "suite": suite,
        "protocol": protocol.name,
        "task_ids": [t["task_id"] for t in per_task],
        "init_state_ids": init_state_ids,
        "episodes_per_task": len(init_state_ids),
        "seed": seed,
        "temperature": temperature,
        "success_rate": sum(successes) / len(successes),
        "success_interval": list(wilson_interval(sum(successes), len(successes))),
        "num_episodes": len(successes),
        "num_successes": sum(successes),
        "mean_episode_length": sum(lengths) / len(lengths),
        "per_task": per_task,
        "videos": videos,
        "runtime_s": time.perf_counter() - start,
    }


def _failure_videos(
    policy: Any,
    envs: Any,
    prompts: Any,
    rollout: Any,
    video_dir: str | None,
    max_failures: int,
    rollout_kwargs: dict[str, Any],
) -> list[str]:
    """Save up to `max_failures` failed episodes per task as videos with a frame per env step.

    Evaluation renders only at decisions (one frame per chunk: choppy to watch). A greedy evaluation is
    deterministic, so the failed episodes are replayed with every step rendered; a replay that does not fail again
    (batch-dependent float rounding can change a greedy action) and sampled evaluations keep the decision frames.
    """
    from .rollout import collect_rollouts, save_video

    if video_dir is None:
        return []
    failed = [bool(not s and not f) for s, f in zip(rollout.success.tolist(), rollout.fault.tolist())]
    chosen = []
    for task_id in dict.fromkeys(prompts["task_id"]):
        chosen += [i for i, t in enumerate(prompts["task_id"]) if t == task_id and failed[i]][:max_failures]
    if not chosen:
        return []
    replay = None
    if rollout_kwargs["temperature"] == 0:
        replay = collect_rollouts(
            policy, envs, prompts.select(chosen), progress=False, video_episodes=range(len(chosen)), **rollout_kwargs
        )
    os.makedirs(video_dir, exist_ok=True)
    paths = []
    for k, i in enumerate(chosen):
        prompt = prompts[i]
        path = os.path.join(
            video_dir, f"{prompt['suite']}_task{prompt['task_id']}_init{prompt['init_state_id']}_failure.mp4"
        )
        replayed = replay is not None and not bool(replay.success[k]) and not bool(replay.fault[k])
        save_video(replay.frames(k) if replayed else rollout.frames(i), path)
        paths.append(path)
    return paths


def evaluate_tasks(
    policy: ActionPolicy, tasks: Mapping[str, Sequence[int]] = HELD_OUT_TASKS, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """`evaluate_policy` on several suites: `{suite: results}` for `tasks` = `{suite: task_ids}`."""
    return {suite: evaluate_policy(policy, suite, list(task_ids), **kwargs) for suite, task_ids in tasks.items()}


def forgetting_report(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two evaluations of the same tasks (each one `evaluate_policy` result or an `evaluate_tasks` dict).

    Returns `{"tasks": [{"suite", "task_id", "before", "after", "change"}], "before", "after", "change"}`, the last
    three being means over the tasks (success rates in [0, 1]; a negative change is forgetting).
    """
    before_tasks, after_tasks = _per_task(before), _per_task(after)
    if set(before_tasks) != set(after_tasks):
        raise ValueError(
            f"The two evaluations cover different tasks: {sorted(before_tasks)} before, {sorted(after_tasks)} after."
        )
    rows = [
        {
            "suite": suite,
            "task_id": task_id,
            "before": before_tasks[suite, task_id],
            "after": after_tasks[suite, task_id],
            "change": after_tasks[suite, task_id] - before_tasks[suite, task_id],
        }
        for suite, task_id in sorted(before_tasks)
    ]
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in ("before", "after", "change")}
    return {"tasks": rows, **mean}


def _per_task(results: Mapping[str, Any]) -> dict[tuple[str, int], float]:
    evaluations = [results] if "per_task" in results else list(results.values())
    return {(e["suite"], t["task_id"]): t["success_rate"] for e in evaluations for t in e["per_task"]}
