"""VLAGRPOTrainer: the advantage and clipped-loss math, config checks, and end to end on the real LIBERO simulator."""

import numpy as np
import pytest
import torch

from trl_vla.losses import clipped_policy_loss, group_advantages
from trl_vla.trainer.grpo_config import VLAGRPOConfig


# ---------------------------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    # Two groups of 4: rewards [1, 0, 0, 1] (mean 0.5, unbiased std sqrt(1/3)) and [1, 0, 0, 0] (mean 0.25,
    # unbiased std 0.5).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    std1, std2 = (1 / 3) ** 0.5, 0.5
    expected = torch.tensor(
        [0.5 / std1, -0.5 / std1, -0.5 / std1, 0.5 / std1, 0.75 / std2, -0.25 / std2, -0.25 / std2, -0.25 / std2]
    )
    torch.testing.assert_close(group_advantages(rewards, 4, "group", eps=0.0), expected)
    torch.testing.assert_close(
        group_advantages(rewards, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25])
    )
    batch_std = rewards.std()
    torch.testing.assert_close(
        group_advantages(rewards, 4, "batch", eps=0.0), group_advantages(rewards, 4, "none") / batch_std
    )
    # Within each group the advantages are centred.
    assert group_advantages(rewards, 4).view(2, 4).sum(1).abs().max() < 1e-5


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_groups_get_zero_advantage(scale):
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    advantages = group_advantages(rewards, 3, scale)
    assert torch.equal(advantages[:6], torch.zeros(6))
    assert advantages[6] > 0 and advantages[7] < 0


def test_group_advantages_with_a_given_batch_std():
    # In a distributed round the std is over every process's rewards; each process centres its own groups.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(
        group_advantages(rewards, 2, "batch", eps=0.0, batch_std=torch.tensor(0.25)),
        torch.tensor([2.0, -2.0, 0.0, 0.0]),
    )


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "std")


# ---------------------------------------------------------------------------------------------------------------
# Clipped loss
# ---------------------------------------------------------------------------------------------------------------


def test_clipped_loss_hand_computed():
    # Four tokens with ratios 1.5, 0.5, 1.1, 0.7 and advantages +1, -1, -2, +2; clip range [0.8, 1.28].
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    new = ratios.log().requires_grad_(True)
    advantages = torch.tensor([[1.0, -1.0, -2.0, 2.0]])
    mask = torch.ones(1, 4)
    loss, stats = clipped_policy_loss(new, old, advantages, mask, epsilon_low=0.2, epsilon_high=0.28)
    # Per token max(-A r, -A clip(r)): -1.28 (clipped high), 0.8 (clipped low), 2.2 (unclipped), -1.4 (unclipped).
    per_token = torch.tensor([-1.28, 0.8, 2.2, -1.4])
    torch.testing.assert_close(loss, per_token.mean())
    assert stats["high_clipped"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert stats["low_clipped"].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    loss.backward()
    # Clipped tokens carry no gradient; the others d/dlogp (-A r) = -A r.
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 0.0, 2.2, -1.4]]) / 4)


def test_clipped_loss_masks_and_normalises_by_the_given_count():
    new = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 3)
    advantages = torch.tensor([[1.0], [-3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, _ = clipped_policy_loss(new, old, advantages, mask)
    torch.testing.assert_close(loss, torch.tensor((-1 - 1 + 3) / 3))
    loss, _ = clipped_policy_loss(new, old, advantages, mask, num_items_in_batch=10.0)
    torch.testing.assert_close(loss, torch.tensor((-1 - 1 + 3) / 10))
    # At ratio 1 the gradient is the policy gradient -A / N on valid tokens only.
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-0.1, -0.1, 0.0], [0.3, 0.0, 0.0]]))


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_config_defaults_and_bad_values(tmp_path):
    args = VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, num_generations=3, prompts_per_step=5)
    assert (args.epsilon, args.epsilon_high, args.temperature, args.scale_rewards) == (0.2, 0.28, 1.6, "group")
    assert args.learning_rate == 5e-6 and args.filter_groups and args.beta == 0.0
    with pytest.raises(ValueError, match="at least 2 episodes"):
        VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, num_generations=1)
    with pytest.raises(ValueError, match="scale_rewards"):
        VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, scale_rewards="mean")
    with pytest.raises(ValueError, match="beta"):
        VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.04)
    with pytest.raises(ValueError, match="dapo"):
        VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, loss_type="grpo")
    with pytest.raises(ValueError, match="temperature"):
        VLAGRPOConfig(output_dir=str(tmp_path), use_cpu=True, temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------
# End to end on the real simulator with the tiny OpenVLA student
# ---------------------------------------------------------------------------------------------------------------

SUITE = "libero_object"


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    from trl_vla.testing import make_tiny_openvla

    return make_tiny_openvla(str(tmp_path_factory.mktemp("student")), decoding="parallel", chunk_size=8, seed=0)


def _trainer(student_path, tmp_path, trainer_class=None, **overrides):
    from trl_vla.envs.libero import make_prompts
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.trainer.grpo_trainer import VLAGRPOTrainer

    kwargs = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "max_steps": 2,
        "prompts_per_step": 1,
        "num_generations": 2,
        "num_envs": 1,
        "max_episode_steps": 16,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "num_videos": 0,
        "seed": 0,
    }
    kwargs.update(overrides)
    return (trainer_class or VLAGRPOTrainer)(
        model=OpenVLAForActionPrediction.from_pretrained(student_path),
        args=VLAGRPOConfig(**kwargs),
        train_dataset=make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1]),
        processing_class=OpenVLAProcessor.from_pretrained(student_path),
    )


@pytest.mark.slow
def test_train_changes_parameters_and_logs_metrics(student_path, tmp_path):
    from trl_vla.trainer.grpo_trainer import VLAGRPOTrainer

    class FirstEpisodeWins(VLAGRPOTrainer):
        # An untrained tiny student never succeeds, so every group would be all-fail (zero advantage): reward the
        # first episode of each group instead, which makes every group informative.
        def compute_rewards(self, rollout):
            return (torch.arange(rollout.num_episodes) % self.args.num_generations == 0).float()

    trainer = _trainer(student_path, tmp_path, FirstEpisodeWins)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 0.5 * len(before)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    keys = {k for entry in logs for k in entry}
    for key in (
        "loss", "reward", "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
        "clip_ratio/region_mean", "approx_kl", "success_rate", "episode_length", "env_steps", "time/rollout",
    ):  # fmt: skip
        assert key in keys, key
    assert all(e["reward"] == 0.5 and e["frac_reward_zero_std"] == 0.0 for e in logs)
    # One optimizer step per round: the first pass is on-policy, so the ratio starts at 1 (no clipping).
    assert logs[0]["clip_ratio/region_mean"] == 0.0 and abs(logs[0]["approx_kl"]) < 1e-4
    env_steps = [e["env_steps"] for e in logs]
    assert env_steps == sorted(env_steps) and env_steps[-1] > 0
    trainer.create_model_card(model_name="tiny-grpo")  # also what every checkpoint save does
    card = (tmp_path / "out" / "README.md").read_text()
    assert "none (sparse task-success reward)" in card and "distill" not in card
    assert "GRPO** on the sparse task-success reward" in card and "2 episodes per initial state" in card


@pytest.mark.slow
def test_all_fail_groups_give_no_update(student_path, tmp_path):
    # The sparse reward of a student that never succeeds: every group is uninformative and filtered out.
    trainer = _trainer(student_path, tmp_path, max_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    (log,) = [e for e in trainer.state.log_history if "loss" in e]
    assert log["reward"] == 0.0 and log["frac_reward_zero_std"] == 1.0 and log["loss"] == 0.0
    assert log["num_action_tokens"] == 0.0 and log["entropy"] > 0  # the entropy still covers every executed token
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_bad_prompts_fail_before_any_rollout(student_path, tmp_path):
    import datasets

    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.trainer.grpo_trainer import VLAGRPOTrainer

    with pytest.raises(ValueError, match="lacks the prompt columns \\['init_state_id'"):
        VLAGRPOTrainer(
            model=OpenVLAForActionPrediction.from_pretrained(student_path),
            args=VLAGRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, prompts_per_step=1),
            train_dataset=datasets.Dataset.from_dict({"suite": [SUITE], "task_id": [0], "instruction": ["x"]}),
            processing_class=OpenVLAProcessor.from_pretrained(student_path),
        )
    with pytest.raises(TypeError, match="VLAGRPOConfig"):
        VLAGRPOTrainer(model=OpenVLAForActionPrediction.from_pretrained(student_path), args=object())


def test_faulted_episode_and_unexecuted_actions_get_no_credit(student_path, tmp_path):
    # One group of 4 episodes, from a hand-made rollout: episode 3 faulted (its reward says nothing about the policy)
    # and episode 1 succeeded 3 actions into its second chunk (the rest of that chunk never ran).
    from trl_vla.rollout import RolloutBatch

    trainer = _trainer(student_path, tmp_path, num_generations=4, filter_groups=False)
    space = trainer.model.action_space
    tokens, chunk = space.num_action_tokens, space.chunk_size
    executed = torch.tensor([[chunk, chunk], [chunk, 3], [chunk, chunk], [chunk, 0]])
    observation = {"image": np.zeros((64, 64, 3), np.uint8)}
    rollout = RolloutBatch(
        prompts=[{"suite": SUITE, "task_id": 0, "init_state_id": 0}] * 4,
        instructions=["pick"] * 4,
        observations=[[observation, observation] for _ in range(4)],
        token_ids=torch.full((4, 2, tokens), space.first_token_id),
        log_probs=torch.zeros(4, 2, tokens),
        actions=np.zeros((4, 2, chunk, space.action_dim), np.float32),
        executed_actions=executed,
        mask=torch.ones(4, 2, dtype=torch.bool),
        success=torch.tensor([True, True, False, False]),
        fault=torch.tensor([False, False, False, True]),
        fault_messages=["", "", "", "worker died"],
        env_steps=executed.sum(1),
        final_observations=[observation] * 3 + [None],
    )
    trainer._rollout = lambda prompts, temperature, num_generations: rollout
    out = trainer._generate_and_score_completions([rollout.prompts[0]])

    # Rewards [1, 1, 0, fault]: the fault takes the mean of the others (2/3), so its advantage is exactly 0.
    rewards = torch.tensor([1.0, 1.0, 0.0, 2 / 3])
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    torch.testing.assert_close(out["advantages"], expected.repeat_interleave(2))
    assert out["advantages"][6:].abs().max() < 1e-6
    per_step = out["action_mask"].sum(1).tolist()
    per_action = tokens // chunk
    assert per_step == [tokens, tokens, tokens, 3 * per_action, tokens, tokens, 0, 0]
    (micro_batch,) = trainer._split_round(out)  # one optimizer step: its loss is the mean over all valid tokens
    assert micro_batch["num_items_in_batch"].item() == sum(per_step)
