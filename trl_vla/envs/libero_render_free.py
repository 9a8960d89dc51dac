"""Fast, render-free LIBERO episodes for privileged policies (the scripted expert's benchmarks and tests).

A policy that reads only the privileged state needs no camera: `make_state_env` builds LIBERO's
`ControlEnv` without an offscreen renderer (about 100 physics steps/s on one CPU core, against 6-19 with rendering),
and `run_expert_episode` runs LIBERO's standard protocol (reset, fixed init state, 10 no-op steps with the gripper
open, then at most `MAX_EPISODE_STEPS[suite]` policy steps, success = the task's goal predicate).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .libero import MAX_EPISODE_STEPS, NUM_WAIT_STEPS, reset_to_init_state
from .libero_setup import setup_libero
from .libero_state import extract_privileged_state


__all__ = ["MAX_EPISODE_STEPS", "NUM_WAIT_STEPS", "make_state_env", "run_expert_episode", "setup_libero"]


def _task_suite(suite: str) -> Any:
    setup_libero()
    from libero.libero import benchmark

    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {sorted(suites)}.")
    return suites[suite]()


def make_state_env(suite: str, task_id: int) -> tuple[Any, np.ndarray, str]:
    """A render-free LIBERO env for one task, its init states `[50, D]` and its instruction."""
    task_suite = _task_suite(suite)
    from libero.libero import get_libero_path
    from libero.libero.envs.env_wrapper import ControlEnv

    task = task_suite.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    # hard_reset=False, as `LiberoEnv`: a seed then draws the same fixture placement at every reset
    # (`reset_to_init_state`), and an init state gives the scene `LiberoEnv` shows for it.
    env = ControlEnv(bddl_file_name=bddl, has_offscreen_renderer=False, use_camera_obs=False, hard_reset=False)
    return env, task_suite.get_task_init_states(task_id), task.language


def run_expert_episode(
    env: Any,
    act: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    init_state: np.ndarray,
    max_steps: int,
    perturb: Callable[[Any], None] | None = None,
    *,
    placement_seed: int,
) -> tuple[bool, int]:
    """Run one episode of LIBERO's standard protocol with `act(privileged_state) -> action`.

    `perturb(env)`, if given, runs after the wait steps (to start the expert from a disturbed state).
    `placement_seed` seeds LIBERO's draw of the fixture placements at reset (cabinets and stoves are not part of the
    init state); `trl_vla.envs.libero.placement_seed(suite, task_id, init_state_id)` gives the scene `LiberoEnv` uses,
    whatever episodes the env ran before (`reset_to_init_state`).
    Returns `(success, policy steps taken)`.
    """
    reset_to_init_state(env, init_state, placement_seed)
    for _ in range(NUM_WAIT_STEPS):
        env.step(np.array([0.0] * 6 + [-1.0]))
    if perturb is not None:
        perturb(env)
    for step in range(max_steps):
        _, _, done, _ = env.step(act(extract_privileged_state(env)))
        if done:
            return True, step + 1
    return False, max_steps
