"""`VLAGRPOTrainer`: GRPO of a VLA in a simulator with the sparse 0/1 success reward, as a `trl.GRPOTrainer`.

One generation round (every `gradient_accumulation_steps * num_minibatches * num_iterations` training steps):

    prompts (this rank's share)  x num_generations (one group per prompt, all on this rank)
      -> collect_rollouts(student, envs)          student samples at `temperature`, log-probs recorded
      -> reward per episode: 1 if the task succeeded, else 0
      -> group-relative advantage per episode     given to every action token the episode executed
      -> buffer of decision steps                  shuffled, split into num_minibatches minibatches

Each training step recomputes the student's log-probabilities of the sampled tokens and applies the PPO-style clipped
objective with the asymmetric clip of SimpleVLA-RL / DAPO, summed over valid action tokens and divided by its
minibatch's global count of valid action tokens (as `VLAOPDTrainer`). No critic, no reference model.

Maintenance note: `GRPOTrainer.__init__` is built for text generation (tokenizer, reward functions, vLLM, reference
model), so this trainer calls `_BaseTrainer.__init__` directly (through `RolloutTrainerMixin`, as `VLAOPDTrainer`)
and reuses the parent's `training_step`, `prediction_step`, `log` and `_save_checkpoint`.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, ProcessorMixin, TrainerCallback
from trl import GRPOTrainer

from ..action_tokenizer import ActionTokenizer
from ..losses import clipped_policy_loss, group_advantages, token_entropy
from .grpo_config import VLAGRPOConfig
from .rollout_trainer import RolloutTrainerMixin


__all__ = ["VLAGRPOTrainer"]


class VLAGRPOTrainer(RolloutTrainerMixin, GRPOTrainer):
    """
    GRPO for vision-language-action policies with the sparse task-success reward (the "pure RL" baseline of VLA-OPD;
    the recipe of SimpleVLA-RL, [arXiv 2509.09674](https://huggingface.co/papers/2509.09674)).

    The student samples `num_generations` episodes per prompt (task, init state); each episode's reward is 1 if the
    task succeeded and 0 otherwise; its advantage is its reward relative to its group's (see `VLAGRPOConfig`); the
    student maximises the PPO-style clipped surrogate over the action tokens it executed.

    "Distill + GRPO" (the paper's best recipe): pass the output of `VLAOPDTrainer` as `model`; see
    `examples/grpo_libero.py`.

    Example:

    ```python
    >>> from trl_vla import VLAGRPOConfig, VLAGRPOTrainer
    >>> from trl_vla.envs.libero import make_prompts

    >>> trainer = VLAGRPOTrainer(
    ...     model="path/to/student",  # an OpenVLA-family checkpoint, e.g. a VLA-OPD output
    ...     args=VLAGRPOConfig(output_dir="grpo-student", prompts_per_step=8, num_generations=8),
    ...     train_dataset=make_prompts("libero_object"),
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The student: a VLA model or a path to one (forward with `action_token_ids` returning `.action_logits`;
            `sample_actions`; `action_space`).
        args ([`VLAGRPOConfig`], *optional*):
            Configuration.
        train_dataset ([`~datasets.Dataset`]):
            Prompts: columns `suite`, `task_id`, `init_state_id`, `instruction` (see `make_prompts`).
        eval_dataset ([`~datasets.Dataset`], *optional*):
            Prompts evaluated greedily (one episode each) by `evaluate()`.
        processing_class ([`~transformers.ProcessorMixin`], *optional*):
            The student's processor. Loaded from the student's path if `None`.
        callbacks, optimizers: as in [`~transformers.Trainer`].
        peft_config ([`~peft.PeftConfig`], *optional*):
            Train a PEFT (e.g. LoRA) adapter on the student instead of all its weights.
        envs (*optional*):
            A simulator pool to roll out in (see `trl_vla.rollout`); by default one is created per process from the
            config and closed when training ends.
    """

    _tag_names = ["trl", "trl-vla", "grpo", "robotics", "reinforcement-learning"]
    _name = "VLA-GRPO"
    # The model card's account of the training method (`benchmark` and the config `args` are filled in).
    _card_method = (
        "**reinforcement learning with GRPO** on the sparse task-success reward (as in SimpleVLA-RL, "
        "[arXiv 2509.09674](https://huggingface.co/papers/2509.09674)): the student acted in the {benchmark} "
        "simulator, {args.num_generations} episodes per initial state, each rewarded 1 if the task succeeded and 0 "
        "otherwise; every action token was credited with its episode's group-relative advantage under a clipped "
        "policy ratio (epsilon {args.epsilon} / {args.epsilon_high})"
    )
    _paper = {
        "title": "SimpleVLA-RL: Scaling VLA Training via Reinforcement Learning",
        "id": "2509.09674",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{li2025simplevlarl,
                title   = {{SimpleVLA-RL: Scaling VLA Training via Reinforcement Learning}},
                author  = {Haozhan Li and others},
                year    = 2025,
                journal = {arXiv preprint arXiv:2509.09674},
            }"""),
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: VLAGRPOConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: ProcessorMixin | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
        envs: Any = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "student"
            args = VLAGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-VLA-GRPO")
        if not isinstance(args, VLAGRPOConfig):
            raise TypeError(f"`args` must be a `VLAGRPOConfig`, got {type(args).__name__}.")
        self._init_student_and_trainer(
            model, args, train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config, envs
        )
        self.use_adaptive_entropy = False  # read by GRPOTrainer._save_checkpoint
        self.teacher_model = None  # the model card's "teacher" line: GRPO has none

    # ------------------------------------------------------------------------------------------------------------
    # Rollouts and rewards
    # ------------------------------------------------------------------------------------------------------------

    def compute_rewards(self, rollout: Any) -> torch.Tensor:
        """One reward per episode of a round's rollout, in episode order: 1.0 if the task succeeded, else 0.0 (the
        sparse reward of SimpleVLA-RL and VLA-OPD). Override it for another episode-level reward."""
        return rollout.success.float()

    def _generate_and_score_completions(self, prompts: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        num_generations = self.args.num_generations
        start = time.perf_counter()
        rollout = self._rollout(prompts, self.temperature, num_generations)
        rollout_time = time.perf_counter() - start
        steps = rollout.steps()
        if len(steps["observations"]) == 0:
            raise RuntimeError(
                f"Every episode of this generation round ({len(prompts)} prompts) ended in a simulator fault before "
                "the policy acted; see the worker logs."
            )

        # Episodes are laid out prompt by prompt (`_rollout` repeats each prompt num_generations times), so the groups
        # are consecutive blocks of num_generations episodes, all on this process.
        rewards = self.compute_rewards(rollout).float()  # [num_prompts * G]
        # A simulator fault says nothing about the policy: such an episode gets the mean reward of the other episodes
        # of its group (zero advantage under mean-centring) and its steps stay out of the update.
        faults = rollout.fault.bool()
        if faults.any():
            grouped, bad = rewards.view(-1, num_generations), faults.view(-1, num_generations)
            fill = (grouped * ~bad).sum(1, keepdim=True) / (~bad).sum(1, keepdim=True).clamp(min=1)
            rewards = torch.where(bad, fill, grouped).flatten()
        batch_std = None
        if self.args.scale_rewards == "batch" and self.accelerator.num_processes > 1:
            batch_std = self.accelerator.gather(rewards.to(self.accelerator.device)).cpu().std()
        advantages = group_advantages(rewards, num_generations, self.args.scale_rewards, batch_std=batch_std)
        informative = (rewards.view(-1, num_generations).std(1) > 0).repeat_interleave(num_generations)

        episode = steps["episode_index"].long()  # [S] episode of each decision step
        step_advantages = advantages[episode]  # [S]
        # The reward says nothing about actions that never ran (a chunk cut short by the episode's end): only the tokens
        # of executed actions are credited.
        valid_mask = steps["executed_mask"].float() * (~faults[episode]).unsqueeze(1).float()  # [S, A]
        action_mask = valid_mask  # the tokens the loss counts
        if self.args.filter_groups:
            keep = informative[episode]
            action_mask = valid_mask * keep.unsqueeze(1).float()
            # Drop the filtered steps when enough remain for every micro-batch to be non-empty (a forward on an empty
            # batch is not possible; the masked steps then only cost compute).
            if int(keep.sum()) >= self._micro_batches_per_pass:
                index = keep.nonzero().flatten()
                steps = {k: _select(v, index) for k, v in steps.items()}
                action_mask, valid_mask, step_advantages = (
                    action_mask[index],
                    valid_mask[index],
                    step_advantages[index],
                )
        num_items = self.accelerator.gather(action_mask.sum().to(self.accelerator.device)).sum()  # for the metric

        self._log_rollout_metrics(rollout, rollout_time, mode)
        metrics = self._metrics[mode]
        gathered = self.accelerator.gather(
            torch.stack([rewards.sum(), informative.float().sum(), torch.tensor(float(rewards.numel()))])
            .to(self.accelerator.device)
            .unsqueeze(0)
        ).sum(0)
        groups = gathered[2] / num_generations
        metrics["reward"].append((gathered[0] / gathered[2]).item())
        metrics["frac_reward_zero_std"].append(1.0 - (gathered[1] / num_generations / groups).item())
        metrics["num_action_tokens"].append(num_items.item())

        return {
            "observations": steps["observations"],
            "instructions": steps["instructions"],
            "action_token_ids": steps["token_ids"],
            "old_log_probs": steps["log_probs"],
            "advantages": step_advantages,
            "action_mask": action_mask,
            "valid_mask": valid_mask,
        }

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        device = self.accelerator.device
        logits, action_token_ids = self._student_action_logits(model, inputs)  # [B, A, n_bins], [B, A]
        space = self.accelerator.unwrap_model(model).action_space
        columns = ActionTokenizer.from_action_space(space).token_ids_to_columns(action_token_ids)  # [B, A]
        log_probs_all = torch.log_softmax(logits.float() / self.temperature, -1)  # [B, A, n_bins]
        log_probs = log_probs_all.gather(-1, columns.unsqueeze(-1)).squeeze(-1)  # [B, A]
        mask = inputs["action_mask"].to(device)
        # Each rank divides its token sum by (global tokens / processes) so that DDP's gradient averaging yields
        # sum over all tokens / global token count (as VLAOPDTrainer).
        num_items = inputs["num_items_in_batch"].to(device).clamp(min=1.0) / self.accelerator.num_processes
        old_log_probs = inputs["old_log_probs"].to(device)
        loss, stats = clipped_policy_loss(
            log_probs,
            old_log_probs,
            inputs["advantages"].to(device).unsqueeze(1),
            mask,
            epsilon_low=self.args.epsilon,
            epsilon_high=self.args.epsilon_high,
            num_items_in_batch=num_items,
        )

        with torch.no_grad():
            # The entropy is over every executed token (also those of filtered groups); the rest over the loss's.
            valid = inputs["valid_mask"].to(device)
            entropy = token_entropy(log_probs_all)
            per_token = torch.stack(
                [
                    stats["low_clipped"],
                    stats["high_clipped"],
                    old_log_probs.float() - log_probs,  # k1 estimate of KL(old || new) on the sampled tokens
                ]
            )
            sums = torch.cat(
                [
                    (per_token * mask).sum((1, 2)),
                    mask.sum().unsqueeze(0),
                    (entropy * valid).sum().unsqueeze(0),
                    valid.sum().unsqueeze(0),
                ]
            )
        sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)
        count = sums[3].clamp(min=1)
        metrics = self._metrics[mode]
        metrics["entropy"].append((sums[4] / sums[5].clamp(min=1)).item())
        metrics["clip_ratio/low_mean"].append((sums[0] / count).item())
        metrics["clip_ratio/high_mean"].append((sums[1] / count).item())
        metrics["clip_ratio/region_mean"].append(((sums[0] + sums[1]) / count).item())
        metrics["approx_kl"].append((sums[2] / count).item())
        metrics["time/update"].append(time.perf_counter() - start)
        return (loss, logits) if return_outputs else loss


def _select(value: Any, index: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[index]
    return [value[i] for i in index.tolist()]
