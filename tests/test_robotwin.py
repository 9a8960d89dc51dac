"""RoboTwin 2.0 support: task list and prompts, observation/action conversion, BOUNDS statistics, the 14-D x 25 action
tokenization, the environment's own logic (on a stand-in RoboTwin checkout), and the real simulator when installed.

RoboTwin 2.0 needs CUDA, Vulkan and assets from the Hugging Face Hub, so on machines without it the real-simulator tests
are skipped with the list of what is missing; everything else runs everywhere.
"""

import os
import sys
import textwrap

import numpy as np
import pytest
import torch

from trl_vla import ActionTokenizer, normalize_actions, unnormalize_actions
from trl_vla.envs import robotwin
from trl_vla.envs.base import PROMPT_COLUMNS
from trl_vla.envs.robotwin import (
    ROBOTWIN_ACTION_DIM,
    ROBOTWIN_CHUNK_SIZE,
    ROBOTWIN_DEFAULT_INSTRUCTIONS,
    ROBOTWIN_STEP_LIMITS,
    ROBOTWIN_SUITE,
    ROBOTWIN_TASKS,
    RoboTwinEnv,
    action_chunk,
    bounds_norm_stats,
    check_robotwin_install,
    compute_robotwin_norm_stats,
    convert_observation,
    extract_privileged_state,
    make_robotwin_env,
    make_robotwin_prompts,
    robotwin_task_id,
    to_robotwin_action,
)
from trl_vla.losses import LOSSES
from trl_vla.trainer.rollout_trainer import check_prompts_dataset


torch.set_num_threads(1)

TOKENS_PER_DECISION = ROBOTWIN_ACTION_DIM * ROBOTWIN_CHUNK_SIZE


def _raw_obs(height=240, width=320, joints=None, value=0):
    """A RoboTwin `get_obs()` dict as `_base_task.get_obs` builds it (rgb, qpos and endpose enabled)."""
    image = np.full((height, width, 3), value, np.uint8)
    image[0, 0] = [255, 0, 0]  # marks the top-left corner, to check orientation
    return {
        "observation": {
            "head_camera": {"rgb": image, "intrinsic_cv": np.eye(3)},
            "left_camera": {"rgb": image + 1},
            "right_camera": {"rgb": image + 2},
        },
        "joint_action": {
            "left_arm": [0.0] * 6,
            "vector": np.arange(14, dtype=np.float64) / 10 if joints is None else np.asarray(joints),
        },
        "endpose": {"left_endpose": np.arange(7.0), "right_endpose": -np.arange(7.0), "left_gripper": 1.0},
        "pointcloud": [],
    }


# ---------------------------------------------------------------------------------------------------------------
# Tasks and prompts
# ---------------------------------------------------------------------------------------------------------------


def test_task_list_limits_and_instructions_agree():
    assert len(ROBOTWIN_TASKS) == 50 and list(ROBOTWIN_TASKS) == sorted(ROBOTWIN_TASKS)
    assert set(ROBOTWIN_DEFAULT_INSTRUCTIONS) == set(ROBOTWIN_TASKS) == set(ROBOTWIN_STEP_LIMITS)
    assert ROBOTWIN_TASKS[robotwin_task_id("beat_block_hammer")] == "beat_block_hammer"
    assert ROBOTWIN_STEP_LIMITS["beat_block_hammer"] == 400 and ROBOTWIN_STEP_LIMITS["open_microwave"] == 1500
    with pytest.raises(ValueError, match="Did you mean \\['beat_block_hammer'\\]"):
        robotwin_task_id("beat_block_hamer")


def test_prompts_dataset_has_the_trainer_columns():
    prompts = make_robotwin_prompts(["pick_dual_bottles", "stack_bowls_two"], seeds=[0, 1, 2])
    assert len(prompts) == 6
    assert set(PROMPT_COLUMNS) | {"task_name"} == set(prompts.column_names)
    check_prompts_dataset(prompts)
    row = prompts[4]
    assert row["suite"] == ROBOTWIN_SUITE == "robotwin2"
    assert row["task_name"] == "stack_bowls_two" and ROBOTWIN_TASKS[row["task_id"]] == "stack_bowls_two"
    assert row["init_state_id"] == 1
    assert row["instruction"] == ROBOTWIN_DEFAULT_INSTRUCTIONS["stack_bowls_two"]
    # one name, all tasks, errors
    assert len(make_robotwin_prompts("lift_pot")) == 1
    everything = make_robotwin_prompts(seeds=range(2))
    assert len(everything) == 100 and sorted(set(everything["task_id"])) == list(range(50))
    with pytest.raises(ValueError, match="Unknown RoboTwin 2.0 task 'lift_pots'"):
        make_robotwin_prompts("lift_pots")
    with pytest.raises(ValueError, match="non-negative"):
        make_robotwin_prompts("lift_pot", seeds=[-1])
    with pytest.raises(ValueError, match="at least one"):
        make_robotwin_prompts("lift_pot", seeds=[])


# ---------------------------------------------------------------------------------------------------------------
# Observation and action conversion
# ---------------------------------------------------------------------------------------------------------------


def test_convert_observation_shapes_orientation_and_proprio():
    raw = _raw_obs(value=10)
    obs = convert_observation(raw, image_size=None)
    assert set(obs) == {"image", "wrist_image", "right_wrist_image", "proprio"}
    assert obs["image"].shape == (240, 320, 3) and obs["image"].dtype == np.uint8
    np.testing.assert_array_equal(obs["image"], raw["observation"]["head_camera"]["rgb"])  # no flip, no copy of alpha
    assert obs["wrist_image"][1, 1, 0] == 11 and obs["right_wrist_image"][1, 1, 0] == 12  # left, right
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (14,)
    np.testing.assert_allclose(obs["proprio"], np.arange(14) / 10, rtol=1e-6)

    small = convert_observation(raw, image_size=64, wrist_cameras=False)
    assert set(small) == {"image", "proprio"} and small["image"].shape == (64, 64, 3)
    assert small["image"][0, 0, 0] > small["image"][0, 0, 1]  # the red corner stays top-left
    assert abs(int(small["image"][32, 32, 1]) - 10) <= 1

    rgba = _raw_obs()
    rgba["observation"]["head_camera"]["rgb"] = np.zeros((240, 320, 4), np.uint8)
    assert convert_observation(rgba, wrist_cameras=False)["image"].shape == (240, 320, 3)


def test_convert_observation_says_which_config_key_is_missing():
    raw = _raw_obs()
    del raw["observation"]["left_camera"]
    with pytest.raises(KeyError, match="left_camera.*collect_wrist_camera"):
        convert_observation(raw)
    assert "image" in convert_observation(raw, wrist_cameras=False)
    del raw["joint_action"]["vector"]
    with pytest.raises(KeyError, match="data_type.qpos"):
        convert_observation(raw, wrist_cameras=False)


def test_privileged_state_is_fixed_shape():
    state = extract_privileged_state(_raw_obs(), task_id=3, success=True)
    assert state["task_id"].tolist() == [3] and state["task_id"].dtype == np.int64
    assert state["success"].tolist() == [1.0]
    assert state["joint_state"].shape == (14,) and state["left_endpose"].tolist() == list(range(7))
    no_endpose = _raw_obs()
    no_endpose["endpose"] = {}
    assert extract_privileged_state(no_endpose, 0, False)["right_endpose"].tolist() == [0.0] * 7


def test_action_conversion():
    action = np.linspace(-1, 1.5, 14)
    action[6], action[13] = -0.01, 1.02  # grippers a bin's width outside [0, 1]
    converted = to_robotwin_action(action)
    assert converted.dtype == np.float64 and converted.shape == (14,)
    assert converted[6] == 0.0 and converted[13] == 1.0
    np.testing.assert_array_equal(np.delete(converted, [6, 13]), np.delete(action, [6, 13]))  # joints untouched
    # another embodiment: 7-joint arms -> 16-D, grippers at 7 and 15
    seven = to_robotwin_action(np.full(16, 2.0), left_arm_dim=7, right_arm_dim=7)
    assert seven[7] == seven[15] == 1.0 and seven[0] == 2.0
    with pytest.raises(ValueError, match="14-D action or a chunk"):
        to_robotwin_action(np.zeros(7))
    with pytest.raises(ValueError, match="one action, got a chunk of 2"):
        to_robotwin_action(np.zeros((2, 14)))
    with pytest.raises(ValueError, match="NaN"):
        to_robotwin_action(np.full(14, np.nan))


def test_action_chunk():
    assert action_chunk(np.zeros(14)).shape == (1, 14)
    assert action_chunk(torch.zeros(25, 14)).shape == (25, 14)
    with pytest.raises(ValueError, match="got shape \\(25, 7\\)"):
        action_chunk(np.zeros((25, 7)))
    with pytest.raises(ValueError):
        action_chunk(np.zeros((0, 14)))


# ---------------------------------------------------------------------------------------------------------------
# BOUNDS normalisation and the 14-D x 25 tokenization
# ---------------------------------------------------------------------------------------------------------------


def _oft_style_stats(rng):
    actions = rng.normal(size=(500, 14)) * np.linspace(0.2, 1.5, 14)
    actions[:, [6, 13]] = rng.uniform(0, 1, size=(500, 2))
    entry = {
        "mean": actions.mean(0).tolist(),
        "std": actions.std(0).tolist(),
        "min": actions.min(0).tolist(),
        "max": actions.max(0).tolist(),
        "q01": np.quantile(actions, 0.01, 0).tolist(),
        "q99": np.quantile(actions, 0.99, 0).tolist(),
    }
    return actions, {"action": entry, "proprio": dict(entry), "num_transitions": 500}


def test_bounds_stats_reproduce_oft_bounds_normalisation():
    rng = np.random.default_rng(0)
    actions, stats = _oft_style_stats(rng)
    bounds = bounds_norm_stats(stats)
    assert stats["action"]["q01"] != bounds["action"]["q01"]  # the input is not modified
    assert bounds["action"]["mask"] == [True] * 14 and bounds["action"]["normalization"] == "bounds"
    assert bounds["proprio"]["q99"] == stats["proprio"]["max"]
    low, high = np.asarray(stats["action"]["min"]), np.asarray(stats["action"]["max"])
    oft = np.clip(2 * (actions - low) / (high - low + 1e-8) - 1, -1, 1)  # OFT's BOUNDS formula, every dimension
    normalized = normalize_actions(actions, bounds)
    np.testing.assert_allclose(normalized, oft, atol=1e-6)
    assert normalized.min() == pytest.approx(-1.0) and normalized.max() == pytest.approx(1.0)  # nothing clipped
    np.testing.assert_allclose(unnormalize_actions(normalized, bounds), actions, atol=1e-5)
    # with the q01/q99 entries (BOUNDS_Q99) about 2% of the values would be clipped
    assert (np.abs(normalize_actions(actions, stats)) == 1.0).mean() > 0.01

    with pytest.raises(ValueError, match="pick the entry first"):
        bounds_norm_stats({"robotwin": stats})
    with pytest.raises(ValueError, match="lacks 'min'/'max'"):
        bounds_norm_stats({"action": {"q01": [0.0], "q99": [1.0]}})


def test_compute_robotwin_norm_stats_normalises_grippers():
    import datasets

    rng = np.random.default_rng(1)
    dataset = datasets.Dataset.from_dict({"action": rng.uniform(-2, 2, size=(40, ROBOTWIN_CHUNK_SIZE, 14)).tolist()})
    stats = compute_robotwin_norm_stats(dataset)
    assert stats["action"]["mask"] == [True] * 14 and stats["num_transitions"] == 40 * ROBOTWIN_CHUNK_SIZE
    assert stats["action"]["q01"] == stats["action"]["min"]


def test_14d_chunk_25_tokenization_round_trip():
    rng = np.random.default_rng(0)
    actions, stats = _oft_style_stats(rng)
    stats = bounds_norm_stats(stats)
    tok = ActionTokenizer(vocab_size=32000)
    space = tok.action_space(ROBOTWIN_ACTION_DIM, ROBOTWIN_CHUNK_SIZE, unnorm_key="robotwin")
    assert space.num_action_tokens == TOKENS_PER_DECISION == 350

    chunks = actions[: 4 * 25].reshape(4, ROBOTWIN_CHUNK_SIZE, ROBOTWIN_ACTION_DIM)  # [B, chunk, dim]
    ids = tok.encode(normalize_actions(chunks, stats)).reshape(4, -1)  # chunk-major [B, 350]
    assert ids.shape == (4, 350) and tok.is_action_token(ids).all()
    assert ids.min() >= 31744 and ids.max() <= 31999
    # token t * 14 + d is chunk step t, dimension d
    decoded = tok.decode(ids).reshape(4, ROBOTWIN_CHUNK_SIZE, ROBOTWIN_ACTION_DIM)
    robot = unnormalize_actions(decoded, stats)
    width = (np.asarray(stats["action"]["max"]) - np.asarray(stats["action"]["min"])) / 255
    assert np.all(np.abs(robot - chunks) <= width / 2 + 1e-5)  # half a bin on every dimension, grippers included
    assert np.abs(robot[..., [6, 13]] - chunks[..., [6, 13]]).max() <= 1 / 255

    # columns of an action-restricted logit tensor [B, 350, 256]
    columns = tok.token_ids_to_columns(torch.from_numpy(ids))
    assert columns.shape == (4, 350) and columns.min() >= 0 and columns.max() <= 255


# ---------------------------------------------------------------------------------------------------------------
# The distillation losses on a RoboTwin-shaped action space
# ---------------------------------------------------------------------------------------------------------------


def test_losses_on_robotwin_action_tokens_respect_partially_executed_chunks():
    gen = torch.Generator().manual_seed(0)
    batch = 3
    student = torch.randn(batch, TOKENS_PER_DECISION, 256, generator=gen, requires_grad=True)
    teacher = torch.randn(batch, TOKENS_PER_DECISION, 256, generator=gen)
    # the second decision's episode succeeded after 10 of its 25 actions: only 10 * 14 tokens were executed
    executed = torch.tensor([25, 10, 25])
    mask = (torch.arange(TOKENS_PER_DECISION) < executed[:, None] * ROBOTWIN_ACTION_DIM).float()
    assert mask.sum() == (25 + 10 + 25) * 14
    columns = torch.randint(0, 256, (batch, TOKENS_PER_DECISION), generator=gen)
    old_log_probs = torch.log_softmax(student.detach(), -1).gather(-1, columns[..., None]).squeeze(-1)
    for name, loss_fn in LOSSES.items():
        student.grad = None
        loss = loss_fn(
            student,
            teacher,
            mask,
            temperature=1.6,
            num_items_in_batch=mask.sum(),
            beta=0.5,
            action_columns=columns,
            old_log_probs=old_log_probs,
            clip_epsilon=None,
        )
        assert loss.ndim == 0 and torch.isfinite(loss), name
        loss.backward()
        grad = student.grad.abs().sum(-1)  # [B, 350]
        assert grad[1, 10 * 14 :].max() == 0, name  # the unexecuted actions get no gradient
        assert grad[1, : 10 * 14].sum() > 0 and grad[0].sum() > 0, name
    # identical distributions: zero exact reverse KL
    same = LOSSES["reverse_kl"](teacher, teacher, mask, temperature=1.6)
    assert same.abs() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# A tiny OpenVLA-OFT student on RoboTwin's action space, and VLAOPDTrainer's loss on a RoboTwin micro-batch
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robotwin_student(tmp_path_factory):
    from trl_vla.testing import make_tiny_openvla

    _, stats = _oft_style_stats(np.random.default_rng(0))
    return make_tiny_openvla(
        str(tmp_path_factory.mktemp("robotwin_student")),
        decoding="parallel",
        chunk_size=ROBOTWIN_CHUNK_SIZE,
        action_dim=ROBOTWIN_ACTION_DIM,
        norm_stats={"robotwin_beat_block_hammer": bounds_norm_stats(stats)},
        unnorm_key="robotwin_beat_block_hammer",
        use_proprio=True,
        proprio_dim=ROBOTWIN_ACTION_DIM,
        num_images=2,
        seed=0,
    )


def _robotwin_batch(batch=2):
    observations = [convert_observation(_raw_obs(value=40 * i), image_size=64) for i in range(batch)]
    instructions = [ROBOTWIN_DEFAULT_INSTRUCTIONS[ROBOTWIN_TASKS[i]] for i in range(batch)]
    return observations, instructions


def test_tiny_parallel_student_emits_robotwin_chunks(robotwin_student):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy

    model = OpenVLAForActionPrediction.from_pretrained(robotwin_student).eval()
    policy = VLAPolicy(model, OpenVLAProcessor.from_pretrained(robotwin_student))
    space = policy.action_space
    assert (space.action_dim, space.chunk_size, space.num_action_tokens) == (14, 25, 350)

    observations, instructions = _robotwin_batch()
    inputs = policy.build_inputs(observations, instructions)  # head + left wrist images, 14-D proprio
    token_ids, log_probs, actions = policy.sample_actions(
        inputs, temperature=1.6, generator=torch.Generator().manual_seed(0)
    )
    assert token_ids.shape == log_probs.shape == (2, 350)
    assert actions.shape == (2, ROBOTWIN_CHUNK_SIZE, ROBOTWIN_ACTION_DIM)
    # BOUNDS: every dimension, grippers included, un-normalises into [min, max]
    stats = model.config.norm_stats["robotwin_beat_block_hammer"]["action"]
    assert np.all(actions >= np.asarray(stats["min"]) - 1e-4) and np.all(actions <= np.asarray(stats["max"]) + 1e-4)
    # the action RoboTwin receives for each of the 25 steps of the chunk
    for row in actions[0]:
        assert to_robotwin_action(row).shape == (14,)

    with torch.no_grad():
        logits = policy.action_logits(inputs, token_ids)
    assert logits.shape == (2, 350, 256)
    columns = token_ids - space.first_token_id
    expected = torch.log_softmax(logits / 1.6, -1).gather(-1, columns[..., None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-4, rtol=1e-4)
    greedy_ids, _, _ = policy.sample_actions(inputs, temperature=0.0)
    torch.testing.assert_close(greedy_ids - space.first_token_id, logits.argmax(-1))


def test_opd_trainer_loss_on_a_robotwin_micro_batch(robotwin_student, tmp_path):
    from trl_vla import VLAOPDConfig, VLAOPDTrainer
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor

    teacher = OpenVLAForActionPrediction.from_pretrained(robotwin_student)
    with torch.no_grad():  # a different teacher with the same action space
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    trainer = VLAOPDTrainer(
        model=OpenVLAForActionPrediction.from_pretrained(robotwin_student),
        teacher_model=teacher,
        args=VLAOPDConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            bf16=False,
            prompts_per_step=2,
            num_generations=1,
            temperature=1.6,
            learning_rate=1e-3,
            save_strategy="no",
        ),  # fmt: skip
        train_dataset=make_robotwin_prompts(["beat_block_hammer", "lift_pot"], seeds=[0]),
        processing_class=OpenVLAProcessor.from_pretrained(robotwin_student),
    )
    # What a generation round buffers for two decision steps; the second episode succeeded 10 actions into its chunk.
    observations, instructions = _robotwin_batch()
    policy = trainer._student_policy(trainer.model)
    token_ids, old_log_probs, _ = policy.sample_actions(policy.build_inputs(observations, instructions), 1.6)
    mask = (torch.arange(TOKENS_PER_DECISION) < torch.tensor([[25], [10]]) * ROBOTWIN_ACTION_DIM).float()
    inputs = {
        "observations": observations,
        "instructions": instructions,
        "action_token_ids": token_ids,
        "old_log_probs": old_log_probs,
        "action_mask": mask,
        "teacher_logits": trainer._teacher_logits(observations, instructions, token_ids),
        "num_items_in_batch": mask.sum(),
    }
    assert inputs["teacher_logits"].shape == (2, 350, 256)
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-3)
    trainer.model.train()
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[0] > 0
    assert losses[-1] < losses[0]  # the student moves towards the teacher on these states
    assert trainer._metrics["train"]["reverse_kl"][0] == pytest.approx(losses[0], rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Missing installation: an error that says what is missing and how to get it
# ---------------------------------------------------------------------------------------------------------------


def test_missing_checkout_error_lists_every_piece(monkeypatch, tmp_path):
    monkeypatch.delenv("ROBOTWIN_ROOT", raising=False)
    if not check_robotwin_install():
        pytest.skip("RoboTwin 2.0 is installed here")
    with pytest.raises(ImportError) as err:
        RoboTwinEnv("beat_block_hammer")
    message = str(err.value)
    for needle in ("ROBOTWIN_ROOT", "git clone https://github.com/RoboTwin-Platform/RoboTwin.git", "_install.sh"):
        assert needle in message
    if not torch.cuda.is_available():
        assert "CUDA" in message
    # a directory that is not a RoboTwin checkout, then a checkout without its Hub assets
    with pytest.raises(ImportError, match="no `envs/_base_task.py` there"):
        RoboTwinEnv("beat_block_hammer", robotwin_root=tmp_path)
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "_base_task.py").write_text("")
    missing = check_robotwin_install(tmp_path)
    assert any("TianxingChen/RoboTwin2.0" in line and "assets/objects" in line for line in missing)
    assert not any("_base_task.py" in line or "RoboTwin-Platform/RoboTwin.git" in line for line in missing)
    with pytest.raises(ValueError, match="Unknown RoboTwin 2.0 task"):
        RoboTwinEnv("no_such_task")


# ---------------------------------------------------------------------------------------------------------------
# RoboTwinEnv's own logic on a stand-in checkout. The stand-in implements the few members of RoboTwin's task
# interface that RoboTwinEnv calls (setup_demo, play_once, check_success, plan_success, take_action, get_obs,
# eval_success, step_lim, close_env, the instruction generator), and fails if it is called from another directory.
# ---------------------------------------------------------------------------------------------------------------

_STANDIN_TASK = """
import os

import numpy as np

from envs.utils.create_actor import UnStableError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLS = []


def _in_root():
    assert os.getcwd() == ROOT, "RoboTwin must be called from its checkout"


class beat_block_hammer:
    def setup_demo(self, now_ep_num=0, seed=0, **kwargs):
        _in_root()
        CALLS.append(("setup", seed))
        self.seed = seed
        if seed % 100 == 0:
            raise UnStableError(f"seed {seed} unstable")
        self.kwargs = kwargs
        self.take_action_cnt, self.eval_success, self.step_lim = 0, False, None
        self.plan_success = True
        self.qpos = np.zeros(14)

    def play_once(self):
        _in_root()
        # the expert fails on odd seeds; the arm it uses depends on the seed
        self.plan_success = self.seed % 2 == 0
        return {"info": {"{A}": "020_hammer/base0", "{a}": "left" if self.seed % 4 == 0 else "right"}}

    def check_success(self):
        return self.plan_success

    def take_action(self, action, action_type="qpos"):
        _in_root()
        assert action_type == "qpos" and action.shape == (14,)
        if self.take_action_cnt == self.step_lim or self.eval_success:
            return
        if action[1] > 5:  # a target RoboTwin's planner chokes on
            raise RuntimeError("TOPP failed")
        self.take_action_cnt += 1
        self.qpos = action
        CALLS.append(("action", float(action[0])))
        if action[0] > 0.9:  # a qpos target that "solves" the task
            self.eval_success = True

    def get_obs(self):
        _in_root()
        CALLS.append(("render", self.take_action_cnt))
        cameras = self.kwargs["camera"]
        image = np.full((240, 320, 3), self.take_action_cnt, np.uint8)
        observation = {"head_camera": {"rgb": image}}
        if cameras["collect_wrist_camera"]:
            observation["left_camera"] = {"rgb": image}
            observation["right_camera"] = {"rgb": image}
        return {"observation": observation, "joint_action": {"vector": self.qpos}, "endpose": {}}

    def close_env(self, clear_cache=False):
        _in_root()
        CALLS.append(("clear" if clear_cache else "close", self.seed))
"""

_STANDIN_INSTRUCTIONS = """
def generate_episode_descriptions(task_name, episodes, max_descriptions=1000000):
    arm = episodes[0]["{a}"]
    return [{"seen": [f"seen: grab the hammer with the {arm} arm"],
             "unseen": [f"use the {arm} arm to hit the block", f"hammer the block with the {arm} gripper"]}]
"""


@pytest.fixture
def standin_root(tmp_path, monkeypatch):
    root = tmp_path / "RoboTwin"
    files = {
        "envs/__init__.py": "import os\nCONFIGS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "
        "'task_config') + '/'\n",
        "envs/_base_task.py": "",
        "envs/utils/__init__.py": "",
        "envs/utils/create_actor.py": "class UnStableError(Exception):\n    pass\n",
        "envs/beat_block_hammer.py": _STANDIN_TASK,
        "envs/click_bell.py": "from envs.beat_block_hammer import beat_block_hammer\n\n\n"
        "class click_bell(beat_block_hammer):\n    pass\n",
        "description/utils/generate_episode_instructions.py": _STANDIN_INSTRUCTIONS,
        "task_config/demo_clean.yml": textwrap.dedent("""\
            embodiment: [aloha-agilex]
            clear_cache_freq: 2
            domain_randomization: {random_background: false}
            camera: {head_camera_type: D435, wrist_camera_type: D435, collect_head_camera: true,
                     collect_wrist_camera: true}
            data_type: {rgb: true, depth: false, qpos: true, endpose: true}
            """),
        "task_config/_embodiment_config.yml": "aloha-agilex:\n  file_path: ./assets/embodiments/aloha-agilex/\n",
        "task_config/_camera_config.yml": "D435:\n  fovy: 37\n  w: 320\n  h: 240\n",
        "assets/embodiments/aloha-agilex/config.yml": "arm_joints_name: [[a1, a2, a3, a4, a5, a6], "
        "[b1, b2, b3, b4, b5, b6]]\n",
        "assets/objects/.keep": "",
        "assets/background_texture/.keep": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(robotwin, "check_robotwin_install", lambda robotwin_root=None: [])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("ROBOTWIN_ROOT", str(root))

    def forget_modules():
        for name in [m for m in sys.modules if m == "envs" or m.startswith("envs.")]:
            del sys.modules[name]
        sys.modules.pop("generate_episode_instructions", None)

    forget_modules()
    yield root
    forget_modules()


def _calls():
    return sys.modules["envs.beat_block_hammer"].CALLS


def test_env_seeds_instructions_spaces_and_working_directory(standin_root):
    cwd = os.getcwd()
    env = RoboTwinEnv("beat_block_hammer", seed=0, image_size=64)
    assert os.getcwd() == cwd
    assert env.max_episode_steps == ROBOTWIN_STEP_LIMITS["beat_block_hammer"]
    assert env.action_space.shape == (14,) and env.action_space.low[6] == 0.0 and env.action_space.high[13] == 1.0
    assert env.observation_space["image"].shape == (64, 64, 3)

    # seed 100000 is unstable, 100001 the expert fails, 100002 works: episode 0 runs scene 100002
    obs, info = env.reset(options={"init_state_id": 0})
    assert os.getcwd() == cwd
    assert info["scene_seed"] == env.scene_seed == 100002
    assert info["instruction"] == env.instruction
    assert env.instruction in ("use the right arm to hit the block", "hammer the block with the right gripper")
    assert set(obs) == {"image", "wrist_image", "right_wrist_image", "proprio"} and obs["image"].shape == (64, 64, 3)
    assert obs in env.observation_space
    assert info["success"] is False and info["privileged_state"]["task_id"].tolist() == [
        robotwin_task_id("beat_block_hammer")
    ]
    setups = [seed for kind, seed in _calls() if kind == "setup"]
    assert setups == [100000, 100001, 100002, 100002]  # expert pass, then the episode on the same scene
    # the same episode again draws the same scene and instruction; episode 4 runs scene 100004 (left arm)
    assert env.reset(options={"init_state_id": 0})[1]["instruction"] == info["instruction"]
    assert [c for c in _calls() if c[0] == "clear"] == [("clear", 100002)]  # every clear_cache_freq = 2 episodes
    _, info4 = env.reset(options={"init_state_id": 4})
    assert info4["scene_seed"] == 100004 and "left" in info4["instruction"]
    for key in ("success", "privileged_state", "env_steps", "elapsed_steps", "suite", "task_id", "init_state_id"):
        assert key in info4, key  # LiberoEnv's info keys
    assert (info4["suite"], info4["init_state_id"], info4["env_steps"], info4["elapsed_steps"]) == (
        "robotwin2",
        4,
        0,
        0,
    )
    # a pool switches task through reset options, as with LiberoEnv
    with pytest.raises(ValueError, match="suite 'robotwin2', not 'libero_object'"):
        env.reset(options={"suite": "libero_object", "task_id": 0})
    with pytest.raises(ValueError, match="tasks 0..49"):
        env.reset(options={"task_id": 50})
    _, info = env.reset(options={"suite": "robotwin2", "task_id": robotwin_task_id("click_bell"), "init_state_id": 2})
    assert (env.task_name, info["task_id"], info["scene_seed"]) == (
        "click_bell",
        robotwin_task_id("click_bell"),
        100002,
    )
    assert type(env._task).__name__ == "click_bell" and env.max_episode_steps == ROBOTWIN_STEP_LIMITS["click_bell"]
    assert ("close", 100004) in _calls()  # the previous task's scene was closed first
    env.close()


def test_env_steps_chunks_open_loop_and_stops_on_success_or_limit(standin_root):
    env = RoboTwinEnv("beat_block_hammer", seed=1, max_episode_steps=30, image_size=None, wrist_cameras=False)
    obs, info = env.reset(options={"init_state_id": 2})
    assert info["scene_seed"] == 200002 and set(obs) == {"image", "proprio"} and obs["image"].shape == (240, 320, 3)
    del _calls()[:]

    chunk = np.zeros((ROBOTWIN_CHUNK_SIZE, ROBOTWIN_ACTION_DIM))
    chunk[:, 0] = np.linspace(0, 0.5, ROBOTWIN_CHUNK_SIZE)
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert (reward, terminated, truncated, info["success"], info["env_steps"]) == (0.0, False, False, False, 25)
    assert [kind for kind, _ in _calls()] == ["action"] * 25 + ["render"]  # rendered once, at the end of the chunk
    np.testing.assert_allclose(obs["proprio"], chunk[-1])

    # episode limit 30: only 5 more actions run, then the episode is truncated
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert (terminated, truncated, info["env_steps"]) == (False, True, 5)

    # success in the middle of a chunk: the rest of the chunk is not executed
    env.reset(options={"init_state_id": 2})
    chunk[10:, 0] = 1.0
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert (reward, terminated, truncated, info["env_steps"]) == (1.0, True, False, 11)
    assert info["privileged_state"]["success"].tolist() == [1.0] and info["elapsed_steps"] == 11
    np.testing.assert_array_equal(env.render(), obs["image"])
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(chunk)

    # one action at a time also works; bad shapes fail before RoboTwin sees them
    env.reset(options={"init_state_id": 2})
    assert env.step(np.zeros(14))[4]["env_steps"] == 1
    with pytest.raises(ValueError, match="14-D action"):
        env.step(np.zeros((25, 7)))
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(14))


def test_make_robotwin_env_takes_libero_env_arguments(standin_root):
    import functools
    import pickle

    factory = functools.partial(make_robotwin_env, seed=1, expert_check=False)
    env = pickle.loads(pickle.dumps(factory))(
        "robotwin2", robotwin_task_id("click_bell"), image_size=32, wrist_camera=True, max_episode_steps=7
    )
    assert (env.task_name, env.max_episode_steps, env.seed_offset, env.expert_check) == (
        "click_bell",
        7,
        200000,
        False,
    )
    obs, _ = env.reset(options={"init_state_id": 3})
    assert obs["wrist_image"].shape == obs["right_wrist_image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="builds 'robotwin2' environments"):
        make_robotwin_env("libero_object", 0)
    with pytest.raises(ValueError, match="no cheap rendering"):
        make_robotwin_env(cheap_rendering=True)


def test_env_without_expert_check_uses_default_instruction_and_gives_up_on_bad_seeds(standin_root):
    env = RoboTwinEnv("beat_block_hammer", expert_check=False, max_seed_tries=1)
    _, info = env.reset(options={"init_state_id": 1})
    assert info["scene_seed"] == 100001  # the expert would have failed here; without the check the scene is used
    assert info["instruction"] == ROBOTWIN_DEFAULT_INSTRUCTIONS["beat_block_hammer"]
    with pytest.raises(RuntimeError, match="No usable RoboTwin scene .* 100000..100000"):
        env.reset(options={"init_state_id": 0})
    with pytest.raises(ValueError, match="Unknown RoboTwin task config 'demo_nope'.*demo_clean"):
        RoboTwinEnv("beat_block_hammer", task_config="demo_nope")


# ---------------------------------------------------------------------------------------------------------------
# The real simulator (skipped unless RoboTwin 2.0 is installed: CUDA, Vulkan, the checkout and its assets)
# ---------------------------------------------------------------------------------------------------------------

_MISSING = check_robotwin_install()
requires_robotwin = pytest.mark.skipif(
    bool(_MISSING),
    reason="RoboTwin 2.0 is not installed here; missing: " + "; ".join(m.split(":")[0] for m in _MISSING),
)


@pytest.mark.slow
@requires_robotwin
def test_real_robotwin_episode_shapes_and_limit():
    env = RoboTwinEnv("beat_block_hammer", max_episode_steps=30, image_size=128)
    obs, info = env.reset(options={"init_state_id": 0})
    assert obs["image"].shape == (128, 128, 3) and obs["proprio"].shape == (14,)
    assert obs["wrist_image"].shape == obs["right_wrist_image"].shape == (128, 128, 3)
    assert isinstance(info["instruction"], str) and info["instruction"]
    hold = np.repeat(obs["proprio"][None].astype(np.float64), ROBOTWIN_CHUNK_SIZE, 0)  # keep the arms still
    obs, reward, terminated, truncated, info = env.step(hold)
    assert info["env_steps"] == 25 and not terminated and not truncated
    np.testing.assert_allclose(obs["proprio"], hold[0], atol=0.05)
    *_, truncated, info = env.step(hold)
    assert truncated and info["env_steps"] == 5 and not info["success"]
    env.close()


@pytest.mark.slow
@requires_robotwin
def test_real_robotwin_prompts_match_env_instruction_type():
    env = RoboTwinEnv("click_bell", expert_check=False, wrist_cameras=False)
    obs, info = env.reset(options={"init_state_id": 0})
    assert set(obs) == {"image", "proprio"} and info["instruction"] == ROBOTWIN_DEFAULT_INSTRUCTIONS["click_bell"]
    env.close()


def test_robotwin_failures_are_simulator_faults(standin_root):
    from trl_vla.envs.libero import SimulationError

    env = RoboTwinEnv("beat_block_hammer", expert_check=False)
    env.reset(options={"init_state_id": 1})
    chunk = np.zeros((25, 14))
    chunk[3, 1] = 10.0
    with pytest.raises(
        SimulationError, match="beat_block_hammer \\(scene seed 100001, action 3\\): RuntimeError: TOPP"
    ):
        env.step(chunk)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(chunk)


def test_rollouts_and_opd_training_through_the_pool_on_a_standin_robotwin(standin_root, robotwin_student, tmp_path):
    """The rollout engine and VLAOPDTrainer drive RoboTwinEnv through `make_robotwin_env` as they drive LiberoEnv
    (in-process pool: the stand-in checkout is not visible to spawned workers)."""
    import functools

    from trl_vla import VLAOPDConfig, VLAOPDTrainer
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
    from trl_vla.rollout import collect_rollouts, make_env_pool

    model = OpenVLAForActionPrediction.from_pretrained(robotwin_student)
    processor = OpenVLAProcessor.from_pretrained(robotwin_student)
    pool = make_env_pool(
        num_workers=0, image_size=64, wrist_camera=True, env_factory=functools.partial(make_robotwin_env, seed=0)
    )
    prompts = make_robotwin_prompts(["beat_block_hammer", "click_bell"], seeds=[2, 4])
    rollout = collect_rollouts(
        VLAPolicy(model.eval(), processor),
        pool,
        prompts,
        temperature=1.0,
        max_episode_steps=60,
        seed=0,
        progress=False,
    )
    assert rollout.num_episodes == 4 and not rollout.fault.any()
    # the episode's own instruction (RoboTwin's templates, filled by the expert's arm choice) replaces the default
    assert rollout.instructions[0] in ("use the right arm to hit the block", "hammer the block with the right gripper")
    assert "left" in rollout.instructions[1]
    assert rollout.env_steps.tolist() == [60] * 4  # 25 + 25 + 10 actions: the last chunk is cut at the cap
    assert rollout.num_decisions().tolist() == [3] * 4
    steps = rollout.steps()
    assert steps["token_ids"].shape == (12, 350) and steps["observations"][0]["image"].shape == (64, 64, 3)
    assert set(steps["observations"][0]) >= {
        "image",
        "wrist_image",
        "right_wrist_image",
        "proprio",
        "privileged_state",
    }
    assert rollout.actions.shape == (4, 3, ROBOTWIN_CHUNK_SIZE, ROBOTWIN_ACTION_DIM)

    teacher = OpenVLAForActionPrediction.from_pretrained(robotwin_student)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    trainer = VLAOPDTrainer(
        model=model.train(),
        teacher_model=teacher,
        args=VLAOPDConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            bf16=False,
            max_steps=1,
            prompts_per_step=2,
            num_generations=1,
            max_episode_steps=30,
            learning_rate=1e-3,
            save_strategy="no",
            num_videos=0,
            seed=0,
        ),  # fmt: skip
        train_dataset=make_robotwin_prompts(["beat_block_hammer", "click_bell"], seeds=[2]),
        eval_dataset=make_robotwin_prompts("click_bell", seeds=[4]),
        processing_class=processor,
        envs=pool,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert logs["env_steps"] == 60 and logs["worker_faults"] == 0 and np.isfinite(logs["loss"])
    metrics = trainer.evaluate()
    assert metrics["eval_episodes"] == 1.0 and metrics["eval_success_rate"] == 0.0
    assert not pool.closed  # the trainer leaves a pool it was given to its owner
    pool.close()


def test_example_script_runs_on_the_standin(standin_root, tmp_path, monkeypatch):
    """examples/opd_robotwin.py end to end (tiny student and teacher, in-process pool) against the stand-in."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "opd_robotwin.py")
    spec = importlib.util.spec_from_file_location("opd_robotwin", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "opd_robotwin", example)  # dataclasses look their module up
    spec.loader.exec_module(example)
    args = example.make_parser().parse_args_and_config(
        args=[
            "--tasks",
            "beat_block_hammer",
            "click_bell",
            "--seeds",
            "2",
            "--eval_seeds",
            "4",
            "--max_steps",
            "1",
            "--prompts_per_step",
            "2",
            "--num_generations",
            "1",
            "--num_envs",
            "0",
            "--max_episode_steps",
            "50",
            "--image_size",
            "64",
            "--use_cpu",
            "--num_videos",
            "0",
            "--output_dir",
            str(tmp_path),
        ]  # fmt: skip
    )
    results = example.main(*args)
    assert 0.0 <= results["before"] <= 1.0 and 0.0 <= results["after"] <= 1.0
    assert os.path.isfile(tmp_path / "README.md") and os.path.isfile(tmp_path / "config.json")
    # a one-image student asked to see the wrist cameras fails before any simulator starts
    mismatch = ["--model_name_or_path", str(tmp_path / "student_init"), "--teacher_model_name_or_path"]
    mismatch += [str(tmp_path / "teacher"), "--wrist_cameras", "--use_cpu", "--output_dir", str(tmp_path / "again")]
    with pytest.raises(ValueError, match="pass `--wrist_cameras` exactly"):
        example.main(*example.make_parser().parse_args_and_config(args=mismatch))
