"""LIBERO tasks as `gymnasium` environments, with the OpenVLA evaluation protocol built in, and prompt datasets.

`LiberoEnv` wraps LIBERO's `OffScreenRenderEnv` (robosuite 1.4, MuJoCo) and does less work than the usual evaluation
loop without changing what the policy sees:

* **Render only at decisions.** `step` takes one action or a chunk `[k, 7]`, executed open-loop. The cameras are
  rendered only during the chunk's last step; the intermediate steps run physics only. The images are bit-identical
  to rendering at every step, because rendering never changes the simulation state and robosuite's observation
  sampling schedule is left untouched (only the expensive camera sensor is skipped when its frame is not returned).
* **Soft resets.** LIBERO's default `reset()` rebuilds the MuJoCo model (seconds). Here the model is built once per
  task; a reset restores the sim (`MjSim.reset`) and the fixed init state, which gives the same observation as a
  freshly built environment. Switching task (`reset(options={"task_id": ...})`) rebuilds.
* **One forward pass per physics substep.** robosuite runs MuJoCo's forward pass three times in each of the 25
  substeps of an env step (before the controller, in the controller, in `mj_step`); here once, then `mj_step2`. The
  simulation is bit-identical (`_OneForwardPerSubstep`).
* **Cheap rendering** (`cheap_rendering=True`): shadows and reflections off, about 1.5x faster on a software
  renderer but not the pixels the demonstrations were rendered with; off by default.

The protocol of the OpenVLA / OpenVLA-OFT LIBERO evaluation: after every reset the robot waits
`NUM_WAIT_STEPS` no-op steps (`[0] * 6 + [-1]`, gripper open) so that objects settle; then the episode lasts at most
`MAX_EPISODE_STEPS[suite]` environment steps and succeeds when LIBERO's goal predicate holds (`done` of LIBERO's
`step`). Images are the agent view (and optionally the wrist camera) rotated by 180 degrees (`[::-1, ::-1]`), as
OpenVLA was trained on them.
"""

from __future__ import annotations

import functools
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import gymnasium as gym
import numpy as np

from .base import SimulationError
from .libero_setup import benchmark_suite, renderer_error
from .libero_state import LIBERO_SUITES, _robosuite_env, extract_privileged_state
from .phase_clock import PhaseClock


__all__ = [
    "LIBERO_SUITES",
    "MAX_EPISODE_STEPS",
    "NUM_WAIT_STEPS",
    "WAIT_ACTION",
    "LiberoEnv",
    "SimulationError",
    "init_states",
    "libero_observation",
    "make_prompts",
    "placement_seed",
    "reset_to_init_state",
    "task_info",
]

MAX_EPISODE_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
"""Environment steps per episode (after the wait steps) in the OpenVLA / OpenVLA-OFT LIBERO evaluation."""

NUM_WAIT_STEPS = 10
"""No-op steps after every reset, while the objects dropped into the scene settle."""

WAIT_ACTION = np.array([0.0] * 6 + [-1.0], dtype=np.float32)
"""The no-op action of the wait steps: no motion, gripper open."""

ACTION_DIM = 7
PROPRIO_DIM = 8
_AGENT_CAMERA, _WRIST_CAMERA = "agentview", "robot0_eye_in_hand"


def _benchmark_suite(suite: str) -> Any:
    try:
        return benchmark_suite(suite)
    except KeyError:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {list(LIBERO_SUITES)}.") from None


@functools.cache
def init_states(suite: str, task_id: int) -> np.ndarray:
    """The fixed init states `[50, D]` (flattened MuJoCo states) of a LIBERO task."""
    return np.asarray(_benchmark_suite(suite).get_task_init_states(task_id))


def task_info(suite: str, task_id: int) -> dict[str, Any]:
    """`{"instruction", "bddl_file", "num_init_states"}` of a LIBERO task; `ValueError` for unknown suites or ids."""
    task_suite = _benchmark_suite(suite)
    if not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < task_suite.n_tasks:
        raise ValueError(
            f"Task id {task_id!r} is out of range for {suite!r}, which has tasks 0..{task_suite.n_tasks - 1}."
        )
    from libero.libero import get_libero_path

    task = task_suite.get_task(int(task_id))
    return {
        "instruction": task.language,
        "bddl_file": os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
        "num_init_states": len(init_states(suite, int(task_id))),
    }


def make_prompts(
    suite: str, task_ids: Sequence[int] | None = None, init_state_ids: Sequence[int] | None = None
) -> datasets.Dataset:
    """The prompts of a LIBERO suite: one row per (task, init state), task-major.

    Args:
        suite: `libero_spatial`, `libero_object`, `libero_goal`, `libero_10` or `libero_90`.
        task_ids: Tasks to include (default: every task of the suite).
        init_state_ids: Fixed init states to include for every task (default: all 50).

    Returns:
        A `datasets.Dataset` with columns `suite`, `task_id`, `init_state_id`, `instruction`, ready for
        `trl_vla.rollout.collect_rollouts` and the rollout trainers.
    """
    if suite not in LIBERO_SUITES:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {list(LIBERO_SUITES)}.")
    task_ids = list(range(_benchmark_suite(suite).n_tasks)) if task_ids is None else list(task_ids)
    if not task_ids:
        raise ValueError("`task_ids` is empty.")
    rows = {"suite": [], "task_id": [], "init_state_id": [], "instruction": []}
    for task_id in task_ids:
        info = task_info(suite, task_id)
        ids = list(range(info["num_init_states"])) if init_state_ids is None else list(init_state_ids)
        if not ids:
            raise ValueError("`init_state_ids` is empty.")
        bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < info["num_init_states"]]
        if bad:
            raise ValueError(
                f"Init state ids {bad} are out of range: task {task_id} of {suite!r} has init states "
                f"0..{info['num_init_states'] - 1}."
            )
        for init_state_id in ids:
            rows["suite"].append(suite)
            rows["task_id"].append(int(task_id))
            rows["init_state_id"].append(int(init_state_id))
            rows["instruction"].append(info["instruction"])
    return datasets.Dataset.from_dict(rows)


def placement_seed(suite: str, task_id: int, init_state_id: int) -> int:
    """The seed of LIBERO's fixture placement draw for an init state (stable across processes and runs)."""
    return zlib.crc32(f"{suite}/{task_id}/{init_state_id}".encode())


def reset_to_init_state(env: Any, init_state: np.ndarray, seed: int) -> None:
    """Reset a LIBERO env built with `hard_reset=False` to one of its task's init states, in the scene `seed` draws.

    LIBERO re-samples the fixture placements (cabinets, stoves: model body poses, not part of the init state) from
    numpy's global RNG at every reset; this seeds that draw (`placement_seed` gives the seed of an init state) and
    restores the caller's global RNG state afterwards. The env must not rebuild its model at reset: every rebuild
    appends one more sampler of the drawers' and knobs' initial joints to the draws before the fixtures', so that
    a seed would give another scene at each reset.
    """
    robot_env = _robosuite_env(env)
    if robot_env.hard_reset:
        raise ValueError(
            "reset_to_init_state needs a LIBERO env built with hard_reset=False: a rebuilding reset draws a "
            "different scene for the same seed each time."
        )
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        env.reset()  # MjSim.reset + robosuite's internal reset (controllers, observables); no rebuild
    finally:
        np.random.set_state(rng_state)
    for robot in robot_env.robots:
        # The gripper's smoothed command lives in the gripper model, which only a model rebuild recreates.
        robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
    env.set_init_state(init_state)


def _quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """robosuite's `quat2axisangle` (xyzw quaternion -> axis * angle), as the OpenVLA-OFT LIBERO proprio uses it."""
    w = min(max(float(quat[3]), -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3, np.float32)
    return (np.asarray(quat[:3], np.float64) * 2.0 * math.acos(w) / den).astype(np.float32)


def libero_observation(raw: dict[str, np.ndarray], wrist_camera: bool = False) -> dict[str, np.ndarray]:
    """LIBERO's raw observation dict -> `LiberoEnv`'s observation (images rotated 180 degrees, 8-D proprio)."""
    obs = {"image": np.ascontiguousarray(raw[f"{_AGENT_CAMERA}_image"][::-1, ::-1])}
    if wrist_camera:
        obs["wrist_image"] = np.ascontiguousarray(raw[f"{_WRIST_CAMERA}_image"][::-1, ::-1])
    obs["proprio"] = np.concatenate(
        [
            np.asarray(raw["robot0_eef_pos"], np.float32),
            _quat_to_axis_angle(raw["robot0_eef_quat"]),
            np.asarray(raw["robot0_gripper_qpos"], np.float32),
        ]
    )
    return obs


_RENDERER_ERROR = re.compile(r"egl|osmesa|opengl|glfw|gl context|display", re.IGNORECASE)


class _SimSnapshot:
    """Everything a LIBERO step reads or writes besides the images: MuJoCo's integration state (with the solver's
    warm start, so the continuation is bit-identical), robosuite's clocks, the observables' sampling timers and last
    values, and each robot's controller goal and smoothed gripper command."""

    def __init__(self, env: Any):
        import mujoco

        self._env = env
        sim = env.sim
        self._model, self._data = sim.model._model, sim.data._data
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._physics = np.empty(mujoco.mj_stateSize(self._model, self._spec))
        mujoco.mj_getState(self._model, self._data, self._physics, self._spec)
        robosuite_env = env.env
        self._clock = (robosuite_env.timestep, robosuite_env.cur_time)
        self._observables = {
            name: _copy_attributes(
                observable, ("_time_since_last_sample", "_current_delay", "_current_observed_value", "_sampled")
            )
            for name, observable in robosuite_env._observables.items()
        }
        self._robots = [
            (
                _copy_attributes(robot.controller, ("goal_pos", "goal_ori", "relative_ori", "ori_ref", "torques")),
                np.copy(robot.gripper.current_action),
            )
            for robot in robosuite_env.robots
        ]

    def restore(self) -> None:
        import mujoco

        mujoco.mj_setState(self._model, self._data, self._physics, self._spec)
        mujoco.mj_forward(self._model, self._data)
        robosuite_env = self._env.env
        robosuite_env.timestep, robosuite_env.cur_time = self._clock
        for name, values in self._observables.items():
            robosuite_env._observables[name].__dict__.update(values)
        for robot, (controller, gripper) in zip(robosuite_env.robots, self._robots):
            robot.controller.__dict__.update(controller)
            robot.gripper.current_action = gripper


class _OneForwardPerSubstep:
    """robosuite's physics substep with one MuJoCo forward pass instead of three, with the same simulation.

    robosuite runs each of the 25 substeps of an env step as `sim.forward()`, the controller (whose update calls
    `sim.forward()` again, on the same state), then `sim.step()` (`mj_step`, whose own forward pass repeats the
    position and velocity stages on that state once more). Here the controller's forward is skipped, and the step is
    `mj_step2` (actuation, acceleration, constraints, integration with the controller's new `ctrl`), which continues
    from the substep's forward pass. The trajectory, observations and privileged states are bit-identical to LIBERO's
    own stepping (`tests/test_libero_env.py`).

    Only the substeps of robosuite's `step` take the short way: `forward()` and `step()` called from anywhere else
    (a reset, a test setting a state) are MuJoCo's full `mj_forward` and `mj_step`. One thing differs inside a
    substep: the controller reads the force-torque sensors (acceleration stage) of the previous substep's step, not
    of the repeated forward pass; robosuite only stores them in the robot's `recent_ee_forcetorques` history,
    which no LIBERO observation uses.
    """

    def __init__(self, sim: Any):
        import mujoco

        self._mujoco = mujoco
        self._model, self._data = sim.model._model, sim.data._data
        self._in_controller = False
        self._continue_step = False

    def forward(self) -> None:
        if self._in_controller:
            return  # the substep's forward pass ran just before the controller, on the same state
        self._mujoco.mj_forward(self._model, self._data)

    def step(self, with_udd: bool = True) -> None:
        if self._continue_step:
            self._continue_step = False
            self._mujoco.mj_step2(self._model, self._data)
        else:
            self._mujoco.mj_step(self._model, self._data)

    def controlled(self, pre_action: Callable[..., Any]) -> Callable[..., Any]:
        """robosuite's `_pre_action` (the controller), run between a substep's forward pass and its step."""

        def run(*args, **kwargs):
            self._in_controller, self._continue_step = True, False
            try:
                result = pre_action(*args, **kwargs)
            finally:
                self._in_controller = False
            self._continue_step = True
            return result

        return run


def _copy_attributes(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    """The attributes `names` of `obj` that it has, numpy arrays copied."""
    values = {name: getattr(obj, name) for name in names if hasattr(obj, name)}
    return {name: np.copy(value) if isinstance(value, np.ndarray) else value for name, value in values.items()}


class LiberoEnv(gym.Env):
    """One LIBERO task as a `gymnasium.Env` with the OpenVLA evaluation protocol built in.

    Args:
        suite: LIBERO suite (`libero_spatial`, `libero_object`, `libero_goal`, `libero_10`, `libero_90`).
        task_id: Task index in the suite.
        image_size: Height and width of the rendered cameras.
        wrist_camera: Also render the wrist camera (`observation["wrist_image"]`).
        cheap_rendering: Shadows and reflections off (faster; the pixels differ from the demonstrations').
        max_episode_steps: Episode limit in environment steps after the wait steps (default: the suite's standard).
        num_wait_steps: No-op steps after each reset.
        seed: Seeds the choice of init state when `reset` is not told which one to use.
        record_step_states: Also return the privileged state after every step of a chunk
            (`info["step_privileged_states"]`), not only after its last one: what a privileged teacher needs to label
            every action of an executed chunk with its own closed-loop action (about 2 ms a step, no rendering).
        lookahead_policy: A privileged policy `policy(privileged_state) -> action [7]` (e.g.
            `trl_vla.teachers.scripted_libero.expert_action`; picklable, for simulator workers). At every decision
            state, the environment runs it `lookahead_steps` steps ahead in its own simulator, without rendering, and
            then restores the exact state: `info["lookahead_actions"]` (`[lookahead_steps, 7]`) is the chunk that
            policy would execute from here (the last action repeated after an early success). This is the label of a
            chunked student that a demonstration of that policy would give at this state.
        lookahead_steps: Length of the lookahead (the student's chunk size).

    Observations are dicts: `image` (`[H, W, 3]` uint8, agent view rotated 180 degrees), `wrist_image` (when
    enabled), `proprio` (`[8]` float32: end-effector position, axis-angle orientation, two gripper finger positions).
    `info` always holds `success`, `privileged_state` (see `trl_vla.envs.libero_state`), `env_steps` (steps run by
    this call), `elapsed_steps`, `suite`, `task_id`, `init_state_id` and `phase_times` (the call's wall-clock seconds
    per phase, from `PhaseClock`: `physics` (MuJoCo's step and forward pass), `controller` (robosuite's arm
    controller), `observables` (robosuite's observation sensors), `render`, `privileged_state`, `lookahead`,
    `reset` (restoring the init state), `build` (a task switch) and `other` (the rest: robosuite's reward and
    bookkeeping, this class's)); with `record_step_states`, `step` adds `step_privileged_states`, the state after each
    step it ran (the last one is `privileged_state`).

    `step(action)` takes one action `[7]` or a chunk `[k, 7]` (robot units: delta position, delta axis-angle,
    gripper -1 open / +1 close), run open-loop; it stops early when the task succeeds or the episode limit is reached.
    `action_space` describes one action.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        task_id: int,
        image_size: int = 128,
        wrist_camera: bool = False,
        cheap_rendering: bool = False,
        max_episode_steps: int | None = None,
        num_wait_steps: int = NUM_WAIT_STEPS,
        seed: int | None = None,
        record_step_states: bool = False,
        lookahead_policy: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
        lookahead_steps: int = 0,
    ):
        if image_size < 1:
            raise ValueError(f"`image_size` must be positive, got {image_size}.")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"`max_episode_steps` must be positive, got {max_episode_steps}.")
        if (lookahead_policy is None) != (lookahead_steps < 1):
            raise ValueError(
                "`lookahead_policy` and a positive `lookahead_steps` go together, got "
                f"lookahead_policy={lookahead_policy!r}, lookahead_steps={lookahead_steps}."
            )
        self.image_size = image_size
        self.lookahead_policy = lookahead_policy
        self.lookahead_steps = lookahead_steps
        self.wrist_camera = wrist_camera
        self.cheap_rendering = cheap_rendering
        self.num_wait_steps = num_wait_steps
        self.record_step_states = record_step_states
        self._max_episode_steps_override = max_episode_steps
        self.render_mode = "rgb_array"

        spaces = {"image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)}
        if wrist_camera:
            spaces["wrist_image"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self._env = None
        self._cameras = [_AGENT_CAMERA] + ([_WRIST_CAMERA] if wrist_camera else [])
        self._render_cameras = True
        self._frames: dict[str, np.ndarray] = {}
        self._record_frames = False
        self._last_obs: dict[str, np.ndarray] | None = None
        self._elapsed = 0
        self._episode_over = True
        self.init_state_id: int | None = None
        self.num_builds = 0
        self.num_renders = 0
        self._clock = PhaseClock()
        with self._clock.phase("build"):
            self._load_task(suite, task_id)
        self._clock.take()
        if seed is not None:
            self.np_random, _ = gym.utils.seeding.np_random(seed)

    # ------------------------------------------------------------------------------------------------------------
    # Building the simulator
    # ------------------------------------------------------------------------------------------------------------

    def _load_task(self, suite: str, task_id: int) -> None:
        if suite not in LIBERO_SUITES:
            raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {list(LIBERO_SUITES)}.")
        info = task_info(suite, task_id)
        if self._env is not None:
            self._env.close()
            self._env = None
        from libero.libero.envs import OffScreenRenderEnv

        try:
            # hard_reset=False: `reset()` restores the existing MjSim instead of rebuilding the model from XML.
            self._env = OffScreenRenderEnv(
                bddl_file_name=info["bddl_file"],
                camera_names=self._cameras,
                camera_heights=self.image_size,
                camera_widths=self.image_size,
                hard_reset=False,
                ignore_done=True,  # robosuite's own horizon (1000 steps) would refuse longer episodes
            )
        except Exception as err:
            if _RENDERER_ERROR.search(f"{type(err).__name__} {err}"):
                raise renderer_error(err) from err
            raise
        self.num_builds += 1
        self.suite, self.task_id = suite, int(task_id)
        self.instruction = info["instruction"]
        self.init_states = init_states(suite, int(task_id))
        self.max_episode_steps = self._max_episode_steps_override or MAX_EPISODE_STEPS[suite]
        self._wrap_cameras()
        self._time_phases()
        if self.cheap_rendering:
            import mujoco

            flags = self._env.sim._render_context_offscreen.scn.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._episode_over = True

    def _wrap_cameras(self) -> None:
        """Make the camera sensors render only while `self._render_cameras` is set.

        robosuite samples every observable on its own schedule inside `step`; the wrapped sensor keeps that schedule
        (so the frame returned at a decision is the one LIBERO would return) and only skips the rendering of frames
        that nobody reads.
        """
        robosuite_env = self._env.env
        for camera in self._cameras:
            name = f"{camera}_image"
            sensor = robosuite_env._observables[name]._sensor

            def gated(obs_cache, _sensor=sensor, _name=name):
                if self._render_cameras or _name not in self._frames:
                    with self._clock.phase("render"):
                        self._frames[_name] = _sensor(obs_cache)
                    self.num_renders += 1
                return self._frames[_name]

            gated.__modality__ = sensor.__modality__
            robosuite_env.modify_observable(name, "sensor", gated)

    def _time_phases(self) -> None:
        """Charge robosuite's physics, controller and observables to their phases of `self._clock`, and run each
        physics substep with one forward pass instead of three (`_OneForwardPerSubstep`). Both are instance
        attributes that shadow the methods robosuite's `step` calls."""
        robosuite_env, sim = self._env.env, self._env.sim
        physics = _OneForwardPerSubstep(sim)
        sim.step = self._clock.timed("physics", physics.step)
        sim.forward = self._clock.timed("physics", physics.forward)
        robosuite_env._pre_action = self._clock.timed("controller", physics.controlled(robosuite_env._pre_action))
        robosuite_env._update_observables = self._clock.timed("observables", robosuite_env._update_observables)
        robosuite_env._get_observations = self._clock.timed("observables", robosuite_env._get_observations)

    def _privileged_state(self) -> dict[str, np.ndarray]:
        with self._clock.phase("privileged_state"):
            return extract_privileged_state(self._env)

    # ------------------------------------------------------------------------------------------------------------
    # gymnasium API
    # ------------------------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: restore a fixed init state, then run the wait steps.

        `options` may hold `init_state_id` (default: drawn with the env's RNG), `suite` / `task_id` to switch
        task (the MuJoCo model is rebuilt only when the task changes), and `record_frames=True` to render the agent
        view at every step of this episode (`info["step_frames"]` of each `step`, for videos; by default only the
        frame a decision is made on is rendered).
        """
        with self._clock.phase("other"):
            obs, info = self._reset(seed, options)
        info["phase_times"] = self._clock.take()
        return obs, info

    def _reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        suite, task_id = options.get("suite", self.suite), options.get("task_id", self.task_id)
        if (suite, task_id) != (self.suite, self.task_id):
            with self._clock.phase("build"):
                self._load_task(suite, task_id)
        init_state_id = options.get("init_state_id")
        if init_state_id is None:
            init_state_id = int(self.np_random.integers(len(self.init_states)))
        if not 0 <= init_state_id < len(self.init_states):
            raise ValueError(
                f"`init_state_id` {init_state_id} is out of range: task {self.task_id} of {self.suite!r} has init "
                f"states 0..{len(self.init_states) - 1}."
            )
        self.init_state_id = int(init_state_id)
        self._record_frames = bool(options.get("record_frames", False))

        self._render_cameras = False
        with self._clock.phase("reset"):
            reset_to_init_state(
                self._env,
                self.init_states[self.init_state_id],
                placement_seed(self.suite, self.task_id, self.init_state_id),
            )
        self._elapsed = 0
        self._episode_over = False
        raw = None
        for i in range(self.num_wait_steps):
            self._render_cameras = i == self.num_wait_steps - 1
            raw, _, _, _ = self._env.step(WAIT_ACTION)
            self._check_finite()
        if raw is None:  # no wait steps: render the init state itself
            self._render_cameras = True
            raw = self._env.env._get_observations(force_update=True)
        self._render_cameras = False
        obs = self._observation(raw)
        info = self._info(success=False, env_steps=0)
        if self.lookahead_policy is not None:
            info["lookahead_actions"] = self._lookahead(info["privileged_state"])
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Run one action `[7]` or a chunk `[k, 7]` open-loop; render once, after the last step that runs.

        Returns gymnasium's `(observation, reward, terminated, truncated, info)`: reward 1.0 and `terminated` on
        success, `truncated` when the episode limit is reached; `info["env_steps"]` counts the steps run.
        """
        with self._clock.phase("other"):
            result = self._step(action)
        result[-1]["phase_times"] = self._clock.take()
        return result

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError("The episode is over (or was never started); call `reset()` first.")
        actions = np.asarray(action, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None]
        if actions.ndim != 2 or actions.shape[-1] != ACTION_DIM or actions.shape[0] == 0:
            raise ValueError(f"Expected an action [{ACTION_DIM}] or a chunk [k, {ACTION_DIM}], got {actions.shape}.")
        if not np.all(np.isfinite(actions)):
            raise ValueError("The action contains NaN or inf.")
        num = min(len(actions), self.max_episode_steps - self._elapsed)
        success, raw = False, None
        step_states, frames = [], []
        for i in range(num):
            self._render_cameras = self._record_frames or i == num - 1
            raw, _, done, _ = self._env.step(actions[i])
            self._elapsed += 1
            self._check_finite()
            if self.record_step_states:
                step_states.append(self._privileged_state())
            if self._record_frames:
                frames.append(libero_observation(raw, False)["image"])
            if done:
                success = True
                if i < num - 1:  # stopped early: this step ran without the camera
                    self._render_frames_now(raw)
                num = i + 1
                break
        self._render_cameras = False
        truncated = not success and self._elapsed >= self.max_episode_steps
        self._episode_over = success or truncated
        obs = self._observation(raw)
        info = self._info(success=success, env_steps=num, privileged_state=step_states[-1] if step_states else None)
        if self.record_step_states:
            info["step_privileged_states"] = step_states
        if self._record_frames:
            info["step_frames"] = frames
        if self.lookahead_policy is not None and not self._episode_over:
            info["lookahead_actions"] = self._lookahead(info["privileged_state"])
        return obs, float(success), success, truncated, info

    def render(self) -> np.ndarray:
        """The agent-view frame of the last observation (`[H, W, 3]` uint8)."""
        if self._last_obs is None:
            raise RuntimeError("Nothing rendered yet; call `reset()` first.")
        return self._last_obs["image"]

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    # ------------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------------

    @property
    def sim_env(self) -> Any:
        """LIBERO's `OffScreenRenderEnv` under this environment (for privileged state, success checks, debugging)."""
        return self._env

    @property
    def elapsed_steps(self) -> int:
        """Environment steps since the last reset, excluding the wait steps."""
        return self._elapsed

    def _lookahead(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run `lookahead_policy` `lookahead_steps` steps from the current state, camera off, and restore it."""
        with self._clock.phase("lookahead"):
            return self._run_lookahead(state)

    def _run_lookahead(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        snapshot = _SimSnapshot(self._env)
        actions = []
        try:
            for _ in range(self.lookahead_steps):
                action = np.asarray(self.lookahead_policy(state), dtype=np.float64)
                actions.append(action)
                _, _, done, _ = self._env.step(action)
                self._check_finite()
                if done:
                    break
                state = self._privileged_state()
        finally:
            snapshot.restore()
        actions += [actions[-1]] * (self.lookahead_steps - len(actions))
        return np.stack(actions).astype(np.float32)

    def _render_frames_now(self, raw: dict[str, np.ndarray]) -> None:
        self._render_cameras = True
        robosuite_env = self._env.env
        for camera in self._cameras:
            name = f"{camera}_image"
            with self._clock.phase("render"):
                raw[name] = np.array(robosuite_env._observables[name]._sensor({}))

    def _check_finite(self) -> None:
        data = self._env.sim.data
        if not (np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel))):
            raise SimulationError(
                f"The simulation state became NaN/inf ({self.suite} task {self.task_id}, init state "
                f"{self.init_state_id}, step {self._elapsed})."
            )
        import mujoco

        if data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0:
            raise SimulationError(
                f"MuJoCo reported an unstable simulation (bad qacc) ({self.suite} task {self.task_id}, init state "
                f"{self.init_state_id}, step {self._elapsed})."
            )

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._last_obs = libero_observation(raw, self.wrist_camera)
        return self._last_obs

    def _info(
        self, success: bool, env_steps: int, privileged_state: dict[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        return {
            "success": bool(success),
            "privileged_state": self._privileged_state() if privileged_state is None else privileged_state,
            "env_steps": int(env_steps),
            "elapsed_steps": self._elapsed,
            "suite": self.suite,
            "task_id": self.task_id,
            "init_state_id": self.init_state_id,
        }
