from dataclasses import dataclass, field

from trl import GRPOConfig
from trl.trainer.base_config import _BaseConfig

from .device_defaults import apply_device_defaults
from .rollout_trainer import RolloutArguments


SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class VLAGRPOConfig(RolloutArguments, GRPOConfig):
    r"""
    Configuration class for [`VLAGRPOTrainer`]: GRPO of a vision-language-action policy in a simulator with the sparse
    0/1 task-success reward, as SimpleVLA-RL ([arXiv 2509.09674](https://huggingface.co/papers/2509.09674)) does it.

    It extends [`trl.GRPOConfig`], replacing text generation by simulator rollouts: each *generation round* runs
    `num_generations` episodes (the group) for each of `prompts_per_step` prompts (task, init state), every episode
    scores 1 if the task succeeded and 0 otherwise, and each episode's group-relative advantage is given to every
    action token it executed. The student is then updated on the buffered steps (`num_iterations` passes of
    `num_minibatches` optimizer steps, each minibatch split into `gradient_accumulation_steps` micro-batches), with the
    PPO-style clipped ratio against the log-probabilities recorded at sampling time, no critic and no reference model.

    Unlike TRL's configs, `bf16` left unset means float32 on CPU (bf16 on CUDA), and `dataloader_pin_memory` is off
    without CUDA (see `trl_vla.trainer.device_defaults`).

    Of [`trl.GRPOConfig`]'s own fields these apply: `temperature` (sampling and loss), `epsilon`, `epsilon_high`,
    `scale_rewards`, `num_generations`, `num_iterations`, `shuffle_dataset`, `model_init_kwargs`,
    `ds3_gather_for_generation`. Text-generation fields (`max_completion_length`, vLLM, `generation_batch_size`,
    `steps_per_generation`, `per_device_train_batch_size`, reward functions, ...) have no effect; the round's size is
    `prompts_per_step * num_generations` episodes. `beta` must stay `0.0` (no KL penalty, no reference model, as
    SimpleVLA-RL) and `loss_type` `"dapo"` (the loss summed over action tokens and divided by the optimizer step's
    global count of valid action tokens, as `VLAOPDTrainer`'s).

    > Parameters that control the rollouts: see [`VLAOPDConfig`] (`prompts_per_step`, `num_generations`,
    > `num_iterations`, `num_minibatches`, `num_envs`, `image_size`, `cheap_rendering`, `max_episode_steps`,
    > `open_loop_steps`, `rollout_timeout`, `num_videos`).

    > Parameters that control the loss

    epsilon (`float`, *optional*, defaults to `0.2`):
        Lower clipping bound of the ratio: `1 - epsilon` (SimpleVLA-RL's `clip_ratio_low=0.2`).
    epsilon_high (`float`, *optional*, defaults to `0.28`):
        Upper clipping bound: `1 + epsilon_high` ("clip-higher", DAPO, [arXiv 2503.14476](https://huggingface.co/papers/2503.14476);
        SimpleVLA-RL's `clip_ratio_high=0.28`), which leaves room for low-probability actions to grow.
    scale_rewards (`str`, *optional*, defaults to `"group"`):
        `"group"`: advantage = (reward - group mean) / (group std + 1e-6), as SimpleVLA-RL's GRPO advantage (unbiased
        std); `"batch"`: divide by the std over the whole round instead; `"none"`: mean-centring only (Dr. GRPO).
    filter_groups (`bool`, *optional*, defaults to `True`):
        Leave the steps of groups whose episodes all succeeded or all failed out of the update and of its token count.
        Their advantage is zero, so they carry no gradient; without the filter they only dilute the normaliser. This is
        SimpleVLA-RL's accuracy filter (keep groups with success rate in [0.1, 0.9], which at G = 8 is the same
        thing) without its refill of the batch by sampling further prompts: a round may therefore update on fewer
        groups than `prompts_per_step`, or (when no group is informative) leave the gradient at zero.
    temperature (`float`, *optional*, defaults to `1.6`):
        Sampling temperature, also applied to the logits in the loss (SimpleVLA-RL's LIBERO rollout temperature).

    > [!NOTE]
    > Changed defaults relative to [`trl.GRPOConfig`]: `learning_rate=5e-6` (SimpleVLA-RL's constant rate),
    > `temperature=1.6`, `epsilon_high=0.28`, activation (gradient) checkpointing off, `logging_steps=1` (one
    > optimizer step is a whole round of episodes).
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS

    learning_rate: float = field(default=5e-6, metadata={"help": "The initial learning rate for AdamW."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (off by default here)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps (generation rounds)."})
    temperature: float = field(
        default=1.6, metadata={"help": "Sampling temperature, also used in the loss (SimpleVLA-RL: 1.6)."}
    )
    epsilon: float = field(
        default=0.2, metadata={"help": "Lower ratio clipping bound 1 - epsilon (SimpleVLA-RL: 0.2)."}
    )
    epsilon_high: float | None = field(
        default=0.28,
        metadata={"help": "Upper ratio clipping bound 1 + epsilon_high (DAPO clip-higher, SimpleVLA-RL: 0.28)."},
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Advantage scaling: 'group' (divide by the group's reward std, SimpleVLA-RL), 'batch' (by the "
            "round's std) or 'none' (mean-centring only).",
            "choices": list(SCALE_REWARDS),
        },
    )
    filter_groups: bool = field(
        default=True,
        metadata={
            "help": "Leave groups whose episodes all succeeded or all failed out of the update and its token count "
            "(SimpleVLA-RL's accuracy filter, without refilling the batch)."
        },
    )

    def __post_init__(self):
        # `GRPOConfig.__post_init__` derives a text-generation batch from `per_device_train_batch_size` and checks it
        # against `num_generations`; rollouts are sized by `prompts_per_step` instead (checked below), so only the
        # common TRL/transformers set-up runs.
        apply_device_defaults(self)
        _BaseConfig.__post_init__(self)
        self.scale_rewards = {True: "group", False: "none", "true": "group", "false": "none"}.get(
            self.scale_rewards, self.scale_rewards
        )
        self._check_rollout_arguments()
        if self.num_generations < 2:
            raise ValueError(
                f"GRPO needs at least 2 episodes per prompt (`num_generations`) to compare them, got {self.num_generations}."
            )
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"`scale_rewards` must be one of {list(SCALE_REWARDS)}, got {self.scale_rewards!r}.")
        if self.temperature <= 0:
            raise ValueError(
                f"`temperature` must be positive (GRPO samples its episodes), got {self.temperature}; greedy "
                "evaluation uses temperature 0 on its own."
            )
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if not (0 < self.epsilon < 1 and self.epsilon_high > 0):
            raise ValueError(
                f"Clipping needs 0 < epsilon < 1 and epsilon_high > 0, got epsilon={self.epsilon}, "
                f"epsilon_high={self.epsilon_high}."
            )
        if self.beta != 0.0:
            raise ValueError(
                f"`beta` (KL penalty to a reference model) must be 0.0 for VLAGRPOTrainer, got {self.beta}: like "
                "SimpleVLA-RL it uses no reference model."
            )
        if self.loss_type != "dapo":
            raise ValueError(
                f"VLAGRPOTrainer supports only `loss_type='dapo'` (loss over action tokens divided by their global "
                f"count), got {self.loss_type!r}."
            )
