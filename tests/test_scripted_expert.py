"""The privileged scripted LIBERO expert: it solves tasks in the real simulator (also from perturbed states), its
teacher distribution follows the policy contract, and it refuses what it cannot do."""

import numpy as np
import pytest
import torch

from trl_vla import ActionSpace, ActionTokenizer, normalize_actions


pytest.importorskip("libero")
torch.set_num_threads(1)

from trl_vla.envs.libero import placement_seed, reset_to_init_state  # noqa: E402
from trl_vla.envs.libero_render_free import (  # noqa: E402
    MAX_EPISODE_STEPS,
    NUM_WAIT_STEPS,
    make_state_env,
    run_expert_episode,
)
from trl_vla.envs.libero_state import MAX_OBSTACLE_BOXES, extract_privileged_state, obbs_of_bounds  # noqa: E402
from trl_vla.teachers import ScriptedLiberoExpert, plan_actions, supported_tasks  # noqa: E402
from trl_vla.teachers.scripted_libero import _gripper_collision, closed_loop_actions, expert_action  # noqa: E402


@pytest.fixture(scope="module")
def spatial_env():
    env, init_states, _ = make_state_env("libero_spatial", 0)
    yield env, init_states
    env.close()


@pytest.fixture(scope="module")
def object_env():
    env, init_states, _ = make_state_env("libero_object", 1)
    yield env, init_states
    env.close()


@pytest.fixture(scope="module")
def spatial_state(spatial_env):
    env, init_states = spatial_env
    reset_to_init_state(env, init_states[0], placement_seed("libero_spatial", 0, 0))
    for _ in range(NUM_WAIT_STEPS):
        env.step(np.array([0.0] * 6 + [-1.0]))
    return extract_privileged_state(env)


def test_privileged_state_has_fixed_shapes(spatial_state):
    assert spatial_state["suite_id"].tolist() == [0] and spatial_state["task_id"].tolist() == [0]
    assert spatial_state["eef_pos"].shape == (3,) and spatial_state["eef_xmat"].shape == (9,)
    assert spatial_state["obstacle_boxes"].shape == (MAX_OBSTACLE_BOXES, 6)
    assert spatial_state["obstacle_kind"].shape == (MAX_OBSTACLE_BOXES,)
    # the bowl sits on the table (z = 0.9) and the gripper is open after the wait steps
    assert 0.89 < spatial_state["pick_box"][2] < 0.95
    assert spatial_state["gripper_opening"][0] > 0.07
    assert spatial_state["success"][0] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("fixture,init_ids", [("object_env", (0, 7)), ("spatial_env", (0, 3))])
def test_expert_succeeds_from_standard_init_states(request, fixture, init_ids):
    env, init_states = request.getfixturevalue(fixture)
    suite, task_id = ("libero_object", 1) if fixture == "object_env" else ("libero_spatial", 0)
    expert = ScriptedLiberoExpert(suite)
    for k in init_ids:
        success, steps = run_expert_episode(
            env,
            expert.action,
            init_states[k],
            MAX_EPISODE_STEPS[suite],
            placement_seed=placement_seed(suite, task_id, k),
        )
        assert success, f"{suite} init state {k} failed after {steps} steps"


def _displace_object_and_close_gripper(env):
    """Shift the object to pick by a few centimetres and close the gripper on nothing, away from the object."""
    robot_env = env.env
    state = extract_privileged_state(env)
    others = state["obstacle_boxes"][state["obstacle_kind"] > 0]
    box = state["pick_box"]
    # the first of a few 5 cm shifts that puts the object on free table
    for shift in ([0.05, 0.0], [-0.05, 0.0], [0.0, 0.05], [0.0, -0.05], [0.04, 0.04], [-0.04, -0.04]):
        moved = box + np.array(shift + [0.0] + shift + [0.0])
        if not np.any(np.all(moved[None, :3] < others[:, 3:], 1) & np.all(moved[None, 3:] > others[:, :3], 1)):
            break
    else:
        raise AssertionError("no free spot to displace the object to")
    name = robot_env.obj_of_interest[0]
    joint = robot_env.objects_dict[name].joints[-1]
    address = robot_env.sim.model.get_joint_qpos_addr(joint)[0]
    robot_env.sim.data.qpos[address : address + 2] += np.array(shift)
    robot_env.sim.forward()
    rng = np.random.default_rng(0)
    for _ in range(15):
        env.step(np.concatenate([rng.uniform(-0.5, 0.5, 3), np.zeros(3), [1.0]]))


@pytest.mark.slow
def test_expert_recovers_from_perturbed_state(spatial_env, object_env):
    for suite, task_id, (env, init_states) in (("libero_spatial", 0, spatial_env), ("libero_object", 1, object_env)):
        expert = ScriptedLiberoExpert(suite)
        closed = []

        def perturb(env, closed=closed):
            _displace_object_and_close_gripper(env)
            closed.append(extract_privileged_state(env)["gripper_opening"][0])

        success, steps = run_expert_episode(
            env, expert.action, init_states[1], MAX_EPISODE_STEPS[suite], perturb,
            placement_seed=placement_seed(suite, task_id, 1),
        )  # fmt: skip
        assert closed[0] < 0.01, "the perturbation should leave the gripper closed on nothing"
        assert success, f"{suite}: no recovery from a displaced object and a closed gripper ({steps} steps)"


def test_teacher_distribution_is_normalised_with_mode_at_the_expert_action(spatial_state):
    expert = ScriptedLiberoExpert("libero_spatial", sigma=0.05)
    inputs = expert.build_inputs([{"privileged_state": spatial_state, "image": None}], ["pick up the black bowl"])
    logits = expert.action_logits(inputs, torch.zeros(1, 7, dtype=torch.long))
    assert logits.shape == (1, 7, 256)
    torch.testing.assert_close(torch.logsumexp(logits, -1), torch.zeros(1, 7), atol=1e-5, rtol=0)

    action = expert.action(spatial_state)
    tokenizer = ActionTokenizer.from_action_space(expert.action_space)
    expected = tokenizer.token_ids_to_columns(
        torch.from_numpy(tokenizer.encode(normalize_actions(action, expert.norm_stats)))
    )
    interior = (np.abs(action) < 1 - 2 * 0.05) | (np.abs(action) == 1.0)
    assert interior.sum() >= 4
    assert torch.equal(logits[0].argmax(-1)[interior], expected[interior])

    # greedy sampling returns the mode, decoded back to (nearly) the expert's action
    token_ids, log_probs, actions = expert.sample_actions(inputs, temperature=0.0)
    assert token_ids.shape == (1, 7) and log_probs.shape == (1, 7) and actions.shape == (1, 1, 7)
    np.testing.assert_allclose(actions[0, 0][interior], action[interior], atol=2 / 255 + 1e-6)
    # and sampling at temperature 1 stays near it
    _, _, sampled = expert.sample_actions(inputs, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert np.abs(sampled[0, 0, :6] - action[:6]).max() < 0.3


def test_teacher_uses_the_students_normalisation(spatial_state):
    stats = {
        "libero_spatial": {
            "action": {"q01": [-0.5] * 6 + [-1.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]}
        }
    }
    space = ActionSpace(action_dim=7, chunk_size=1, unnorm_key="libero_spatial")
    expert = ScriptedLiberoExpert("libero_spatial", action_space=space, norm_stats=stats)
    _, _, actions = expert.sample_actions(expert.build_inputs([{"privileged_state": spatial_state}], ["x"]), 0.0)
    expected = np.clip(expert.action(spatial_state), -0.5, 0.5)
    np.testing.assert_allclose(actions[0, 0, :6], expected[:6], atol=1.0 / 255 + 1e-6)


def test_action_space_matches_the_tiny_student_and_mismatches_raise():
    expert = ScriptedLiberoExpert("libero_object")
    student = ActionSpace(action_dim=7, chunk_size=1)  # OpenVLA's layout, as the tiny student uses it
    assert expert.action_space == student
    student.check_compatible(expert.action_space)
    with pytest.raises(ValueError, match="n_bins"):
        ActionSpace(action_dim=7, n_bins=128).check_compatible(expert.action_space)
    with pytest.raises(ValueError, match="7-D"):
        ScriptedLiberoExpert("libero_object", action_space=ActionSpace(action_dim=6))


def test_chunked_plan_starts_with_the_closed_loop_action(spatial_state):
    expert = ScriptedLiberoExpert(
        "libero_spatial", action_space=ActionSpace(action_dim=7, chunk_size=4), chunk_targets="plan"
    )
    plan = plan_actions(spatial_state, 4)
    assert plan.shape == (4, 7)
    np.testing.assert_allclose(plan[0], expert.action(spatial_state))
    # the plan keeps heading for the bowl: the end effector moves the same way over the chunk
    assert np.all(np.sign(plan[:, :2]) == np.sign(plan[0, :2])[None])
    logits = expert.action_logits(expert.build_inputs([{"privileged_state": spatial_state}] * 2, ["x", "x"]), None)
    assert logits.shape == (2, 28, 256)


def test_closed_loop_targets_label_each_executed_action_at_its_state(spatial_state):
    expert = ScriptedLiberoExpert("libero_spatial", action_space=ActionSpace(action_dim=7, chunk_size=4))
    assert expert.chunk_targets == "closed_loop" and expert.needs_step_states
    # A chunk that ran two actions (then the episode ended): the states before each of them and the state after.
    shifted = [
        dict(spatial_state, eef_pos=spatial_state["eef_pos"] + offset) for offset in ([0.02, 0, 0], [0, 0.03, 0])
    ]
    chunk_states = [spatial_state, *shifted]
    (query,) = expert.build_inputs([{"privileged_state": spatial_state, "chunk_privileged_states": chunk_states}])
    targets = expert.target_actions([query])[0]
    np.testing.assert_array_equal(targets[0], expert_action(spatial_state))
    np.testing.assert_array_equal(targets[1], expert_action(shifted[0]))
    np.testing.assert_array_equal(targets[2:], plan_actions(shifted[1], 2))  # never executed: the plan from there
    assert not np.allclose(targets[1], plan_actions(spatial_state, 4)[1])  # not what the plan from t = 0 says
    np.testing.assert_array_equal(closed_loop_actions(chunk_states, 4), targets)

    # The logits are the Gaussian around these targets; the plan mode ignores the recorded states.
    logits = expert.action_logits([query])
    tokenizer = ActionTokenizer.from_action_space(expert.action_space)
    columns = tokenizer.token_ids_to_columns(
        torch.from_numpy(tokenizer.encode(normalize_actions(targets, expert.norm_stats)))
    ).reshape(-1)
    interior = (np.abs(targets) < 0.9).reshape(-1)
    assert (logits[0].argmax(-1) == columns)[torch.from_numpy(interior)].all()
    planner = ScriptedLiberoExpert("libero_spatial", action_space=expert.action_space, chunk_targets="plan")
    assert not planner.needs_step_states
    np.testing.assert_array_equal(planner.target_actions([query])[0], plan_actions(spatial_state, 4))

    # Without recorded states closed-loop scoring cannot be done, but acting can (it plans).
    bare = expert.build_inputs([{"privileged_state": spatial_state}])
    with pytest.raises(ValueError, match="record_step_states=True"):
        expert.action_logits(bare)
    _, _, actions = expert.sample_actions(bare, temperature=0.0)
    assert actions.shape == (1, 4, 7)
    with pytest.raises(ValueError, match="chunk_targets"):
        ScriptedLiberoExpert("libero_spatial", chunk_targets="open_loop")
    assert not ScriptedLiberoExpert("libero_spatial").needs_step_states  # chunk 1: nothing to label in between


def test_lookahead_targets_are_the_simulated_chunk(spatial_state):
    space = ActionSpace(action_dim=7, chunk_size=4)
    expert = ScriptedLiberoExpert("libero_spatial", action_space=space, chunk_targets="lookahead")
    assert expert.lookahead_policy is expert_action and not expert.needs_step_states
    assert ScriptedLiberoExpert("libero_spatial", action_space=space).lookahead_policy is None  # closed_loop
    assert ScriptedLiberoExpert("libero_spatial", chunk_targets="lookahead").lookahead_policy is None  # chunk 1
    lookahead = np.linspace(-0.5, 0.5, 28, dtype=np.float32).reshape(4, 7)
    (query,) = expert.build_inputs([{"privileged_state": spatial_state, "lookahead_actions": lookahead}])
    np.testing.assert_array_equal(expert.target_actions([query])[0], lookahead)
    # the teacher's most likely bin is the simulated action's bin, at every chunk position
    tokenizer = ActionTokenizer.from_action_space(space)
    columns = tokenizer.token_ids_to_columns(
        torch.from_numpy(tokenizer.encode(normalize_actions(lookahead, expert.norm_stats)))
    ).reshape(-1)
    assert torch.equal(expert.action_logits([query])[0].argmax(-1), columns)
    with pytest.raises(ValueError, match="lookahead_policy=expert_action"):
        expert.action_logits(expert.build_inputs([{"privileged_state": spatial_state}]))


def test_unsupported_tasks_are_refused(spatial_state):
    assert supported_tasks("libero_object") == tuple(range(10))
    assert supported_tasks("libero_goal") == tuple(range(10))
    assert supported_tasks("libero_10") == tuple(range(10))
    assert supported_tasks("libero_90") == ()
    with pytest.raises(ValueError, match="does not support the suite 'libero_90'"):
        ScriptedLiberoExpert("libero_90")
    with pytest.raises(ValueError, match="does not support task 11"):
        ScriptedLiberoExpert("libero_spatial", task_id=11)
    with pytest.raises(ValueError, match="does not support task 10 of libero_10"):
        ScriptedLiberoExpert("libero_10", task_id=10)
    with pytest.raises(ValueError, match="task 0 of libero_spatial"):
        ScriptedLiberoExpert("libero_object").action(spatial_state)
    with pytest.raises(ValueError, match="built for task 3"):
        ScriptedLiberoExpert("libero_spatial", task_id=3).action(spatial_state)
    with pytest.raises(ValueError, match="privileged_state"):
        ScriptedLiberoExpert("libero_spatial").build_inputs([{"image": None}], ["x"])


@pytest.mark.slow
def test_collect_demonstrations_columns_and_norm_stats(tmp_path):
    import datasets

    from trl_vla import compute_norm_stats
    from trl_vla.teachers.demonstrations import collect_demonstrations

    # a truncated episode (12 steps), kept although it did not succeed, keeps the test short
    ds = collect_demonstrations(
        "libero_object",
        task_ids=[1],
        episodes_per_task=1,
        image_size=64,
        keep_failures=True,
        progress=False,
        max_episode_steps=12,
        cheap_rendering=True,
        plan_chunk_size=4,
    )
    assert set(ds.column_names) == {
        "image",
        "proprio",
        "instruction",
        "action",
        "episode_index",
        "frame_index",
        "task_id",
        "init_state_id",
        "success",
        "action_chunk",
    }
    assert len(ds) == 12
    row = ds.with_format("numpy")[0]
    assert row["image"].shape == (64, 64, 3) and row["image"].dtype == np.uint8
    assert row["proprio"].shape == (8,) and row["action"].shape == (7,)
    assert ds["frame_index"] == list(range(12)) and set(ds["episode_index"]) == {0}
    assert set(ds["task_id"]) == {1} and set(ds["init_state_id"]) == {0} and not any(ds["success"])
    assert ds[0]["instruction"] == "pick up the cream cheese and place it in the basket"
    assert np.all(np.abs(np.asarray(ds["action"])) <= 1.0)
    # Each frame's plan starts with the action it executed.
    plans = np.asarray(ds.with_format("numpy")["action_chunk"])
    assert plans.shape == (12, 4, 7)
    np.testing.assert_allclose(plans[:, 0], np.asarray(ds["action"]), atol=1e-6)

    ds.save_to_disk(str(tmp_path / "demos"))
    stats = compute_norm_stats(datasets.load_from_disk(str(tmp_path / "demos")))
    assert stats["num_transitions"] == 12 and stats["action"]["mask"] == [True] * 6 + [False]


def test_collect_demonstrations_refuses_unsupported_tasks():
    from trl_vla.teachers.demonstrations import collect_demonstrations

    with pytest.raises(ValueError, match="does not support tasks \\[0\\] of libero_90"):
        collect_demonstrations("libero_90", task_ids=[0], episodes_per_task=1)


def test_gripper_collision_sees_a_turned_wall_as_thin():
    # A 4 mm wall, 16 cm long, turned 25 degrees about the vertical, and an open gripper closing along it, its hand
    # (3.2 cm half width across the closing axis) 1.1 cm from the wall.
    yaw = np.radians(25.0)
    along, normal = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
    wall = np.array([0.0, 0.0, 1.0, 0.08, 0.002, 0.1, yaw])
    site = np.concatenate([0.045 * normal, [1.0]])
    closing = np.concatenate([along, [0.0]])
    assert _gripper_collision(site, closing, wall[None], rise=0.08) == 0.0
    # its world bounds (what `obstacle_boxes` holds) cover the gripper's place
    half = np.abs(along) * 0.08 + np.abs(normal) * 0.002
    bounds = np.concatenate([wall[:2] - half, [0.9], wall[:2] + half, [1.1]])
    assert _gripper_collision(site, closing, obbs_of_bounds(bounds)[None], rise=0.08) > 0.01
    # 2 cm nearer, the hand is 0.9 cm into the wall
    nearer = site - np.concatenate([0.02 * normal, [0.0]])
    assert _gripper_collision(nearer, closing, wall[None]) == pytest.approx(0.009, abs=1e-6)


def test_obstacle_obbs_are_the_upright_fixture_boxes():
    env, init_states, _ = make_state_env("libero_spatial", 4)  # the wooden cabinet is turned about the vertical
    try:
        reset_to_init_state(env, init_states[0], placement_seed("libero_spatial", 4, 0))
        state = extract_privileged_state(env)
    finally:
        env.close()
    rows = state["obstacle_kind"] >= 0
    boxes, obbs = state["obstacle_boxes"][rows].astype(np.float64), state["obstacle_obbs"][rows].astype(np.float64)
    assert state["obstacle_obbs"].shape == (MAX_OBSTACLE_BOXES, 7)
    # each oriented box lies inside its world bounds and touches them: the bounds are the box's own
    cos, sin = np.abs(np.cos(obbs[:, 6])), np.abs(np.sin(obbs[:, 6]))
    reach = np.stack([cos * obbs[:, 3] + sin * obbs[:, 4], sin * obbs[:, 3] + cos * obbs[:, 4], obbs[:, 5]], 1)
    np.testing.assert_allclose(obbs[:, :3] - reach, boxes[:, :3], atol=1e-5)
    np.testing.assert_allclose(obbs[:, :3] + reach, boxes[:, 3:], atol=1e-5)
    # the cabinet's turned walls: an oriented box of a fraction of the volume of its bounds
    footprint = 4 * obbs[:, 3] * obbs[:, 4]
    bounds_footprint = (boxes[:, 3] - boxes[:, 0]) * (boxes[:, 4] - boxes[:, 1])
    assert (footprint < 0.2 * bounds_footprint).sum() >= 10
