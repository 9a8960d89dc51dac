from dataclasses import dataclass, field

from trl import DistillationConfig

from ..losses import LOSSES
from .device_defaults import apply_device_defaults
from .rollout_trainer import RolloutArguments


@dataclass
class VLAOPDConfig(RolloutArguments, DistillationConfig):
    r"""
    Configuration class for [`VLAOPDTrainer`]: on-policy distillation of a vision-language-action policy (VLA-OPD,
    [arXiv 2603.26666](https://huggingface.co/papers/2603.26666)).

    It extends [`trl.DistillationConfig`] (so `beta=1.0` still means reverse KL where `loss_type="generalized_jsd"`),
    replacing text generation by simulator rollouts: each *generation round* runs `num_generations` episodes for each of
    `prompts_per_step` prompts (split over processes), the teacher scores every decision step of the round in batched
    forwards (together with the steps of the last `replay_rounds` rounds, if any), and the student is updated on the
    buffered steps: `num_iterations` passes over the shuffled buffer, each pass `num_minibatches` optimizer steps on
    disjoint minibatches, each minibatch split into `gradient_accumulation_steps` micro-batches. `temperature` is used
    in the loss, and for sampling unless `rollout_temperature` is set.

    Unlike TRL's configs, `bf16` left unset means float32 on CPU (bf16 on CUDA), and `dataloader_pin_memory` is off
    without CUDA (see `trl_vla.trainer.device_defaults`).

    > Parameters that control the rollouts (shared with the other rollout trainers)

    prompts_per_step (`int`, *optional*, defaults to `64`):
        Prompts (task, init state) per generation round, over all processes. The paper uses 64.
    num_generations (`int`, *optional*, defaults to `8`):
        Episodes per prompt in a generation round (the paper's G).
    num_iterations (`int`, *optional*, defaults to `1`):
        Passes over a generation round's buffer.
    num_minibatches (`int`, *optional*, defaults to `1`):
        Optimizer steps per pass: the shuffled buffer is split into this many minibatches, each step's loss the mean
        over its own minibatch's valid tokens. A round thus makes `num_iterations * num_minibatches` optimizer steps.
    num_envs (`int`, *optional*, defaults to `2`):
        Simulator worker processes per process (rank); `0` steps the simulator in-process.
    image_size (`int`, *optional*, defaults to `128`):
        Camera resolution rendered by the simulator; the processor resizes to the model's input size.
    cheap_rendering (`bool`, *optional*, defaults to `False`):
        Turn shadows and reflections off (faster on CPU, but the images differ from the demonstrations').
    max_episode_steps (`int`, *optional*):
        Override of the suite's standard episode limit in environment steps.
    open_loop_steps (`int`, *optional*):
        Actions of each predicted chunk executed before the policy is queried again (default: the whole chunk).
    rollout_timeout (`float`, *optional*, defaults to `300.0`):
        Seconds a simulator worker may take for one step before it is restarted and its episode counted as a fault.
    num_videos (`int`, *optional*, defaults to `2`):
        Rollout videos saved under `output_dir/videos` at each evaluation.

    > Parameters that control the loss

    loss_type (`str`, *optional*, defaults to `"reverse_kl"`):
        One of `"reverse_kl"` (exact KL(student || teacher) over the action bins), `"sampled_reverse_kl"` (the
        paper's REINFORCE estimator on the sampled tokens: this is what reproduces the paper), `"forward_kl"`,
        `"generalized_jsd"` (uses `beta`) and `"hard_ce"` (cross-entropy on the teacher's argmax: DAgger).
    clip_epsilon (`float`, *optional*):
        PPO-style ratio clipping for `"sampled_reverse_kl"` when a round makes several optimizer steps (samples go
        stale). The paper uses none.
    teacher_batch_size (`int`, *optional*, defaults to `64`):
        Decision steps per batched teacher forward when scoring a round.
    rollout_temperature (`float`, *optional*):
        Sampling temperature of the training rollouts (`0`: greedy), when it should differ from `temperature`, which
        the loss always uses (and the rollouts too when this is unset).
    replay_rounds (`int`, *optional*, defaults to `0`):
        Also train on the teacher-scored decision steps of this many previous generation rounds (DAgger-style
        aggregation of the states the student visited). `0` is the paper's pure on-policy distillation. Needs a loss
        that does not depend on how the replayed tokens were sampled (not `"sampled_reverse_kl"`).
    mask_unexecuted_actions (`bool`, *optional*, defaults to `False`):
        Leave out of the loss the tokens of chunk actions the simulator never executed (the episode ended inside the
        chunk). By default every token the student produced is scored: the teacher's target on a visited state is
        defined for the whole chunk.

    > [!NOTE]
    > Changed defaults relative to [`trl.DistillationConfig`]: `learning_rate=5e-6` (SimpleVLA-RL's constant rate),
    > activation (gradient) checkpointing off (a VLA forward on one observation is short), `logging_steps=1` (one
    > optimizer step is a whole round of episodes).
    """

    _VALID_DICT_FIELDS = DistillationConfig._VALID_DICT_FIELDS

    learning_rate: float = field(default=5e-6, metadata={"help": "The initial learning rate for AdamW."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (off by default here)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps (generation rounds)."})

    loss_type: str = field(
        default="reverse_kl",
        metadata={
            "help": "Distillation loss: reverse_kl (exact, default), sampled_reverse_kl (the paper's estimator), "
            "forward_kl, generalized_jsd (uses beta) or hard_ce (DAgger).",
            "choices": list(LOSSES),
        },
    )
    clip_epsilon: float | None = field(
        default=None,
        metadata={"help": "Ratio clipping for sampled_reverse_kl with several optimizer steps per round."},
    )
    teacher_batch_size: int = field(
        default=64, metadata={"help": "Decision steps per batched teacher forward when scoring a round."}
    )
    rollout_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of the training rollouts (0: greedy); default: `temperature`."},
    )
    replay_rounds: int = field(
        default=0,
        metadata={
            "help": "Previous generation rounds whose teacher-scored steps are trained on again (0: on-policy)."
        },
    )
    mask_unexecuted_actions: bool = field(
        default=False, metadata={"help": "Leave the tokens of chunk actions that never ran out of the loss."}
    )

    def __post_init__(self):
        apply_device_defaults(self)
        super().__post_init__()
        self._check_rollout_arguments()
        if self.loss_type not in LOSSES:
            raise ValueError(f"`loss_type` must be one of {list(LOSSES)}, got {self.loss_type!r}.")
        if self.teacher_batch_size < 1:
            raise ValueError(f"`teacher_batch_size` must be positive, got {self.teacher_batch_size}.")
        if self.clip_epsilon is not None and self.loss_type != "sampled_reverse_kl":
            raise ValueError("`clip_epsilon` only applies to `loss_type='sampled_reverse_kl'`.")
        if self.rollout_temperature is not None and self.rollout_temperature < 0:
            raise ValueError(f"`rollout_temperature` must be >= 0 (0: greedy), got {self.rollout_temperature}.")
        if self.replay_rounds < 0:
            raise ValueError(f"`replay_rounds` must be >= 0, got {self.replay_rounds}.")
        if self.replay_rounds > 0 and self.loss_type == "sampled_reverse_kl":
            raise ValueError(
                "`replay_rounds` > 0 trains on tokens an older student sampled, which biases the sampled estimator "
                "(`loss_type='sampled_reverse_kl'`); use an exact divergence such as `reverse_kl`, or no replay."
            )
