"""`VLAOPDTrainer`: on-policy distillation of a VLA in a simulator, as a `trl.DistillationTrainer`.

One generation round (every `gradient_accumulation_steps * num_minibatches * num_iterations` training steps):

    prompts (this rank's share)  x num_generations
      -> collect_rollouts(student, envs)          student samples, simulator steps (worker processes)
      -> teacher.action_logits(...)                once per round, batched, off the env-stepping path
      -> buffer of decision steps                  + the last `replay_rounds` rounds' steps (DAgger-style), shuffled,
                                                   split into num_minibatches minibatches of micro-batches

Each training step takes one micro-batch, recomputes the student's action logits with gradients and applies
`losses.<loss_type>` to (student, teacher) logits over the action bins, normalised by its minibatch's global count of
valid action tokens.

Maintenance note: `DistillationTrainer.__init__` is built for text generation (tokenizer, generation config, image
token suppression, vocabulary check), so this trainer calls `_BaseTrainer.__init__` directly and reuses the parent's
`training_step`, `prediction_step`, `log` and `_save_checkpoint`.
"""

from __future__ import annotations

import collections
import textwrap
import time
from typing import Any

import datasets
import torch
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin, TrainerCallback
from trl import DistillationTrainer
from trl.models import prepare_deepspeed, prepare_fsdp

from ..action_tokenizer import ActionTokenizer, check_norm_stats_compatible, select_norm_stats
from ..losses import LOSSES, token_entropy
from ..policy import ActionPolicy
from .opd_config import VLAOPDConfig
from .rollout_trainer import RolloutTrainerMixin


PRIVILEGED_KEYS = ("privileged_state", "chunk_privileged_states", "lookahead_actions")


class VLAOPDTrainer(RolloutTrainerMixin, DistillationTrainer):
    """
    On-policy distillation for vision-language-action policies (VLA-OPD, [arXiv 2603.26666](https://huggingface.co/papers/2603.26666)).

    The student acts in the simulator; a frozen teacher scores every action token the student produced, on the states
    the student visited; the student minimises a divergence to the teacher per action token (by default the exact
    reverse KL over the action bins, see `trl_vla.losses`).

    Example:

    ```python
    >>> from trl_vla import VLAOPDConfig, VLAOPDTrainer
    >>> from trl_vla.envs.libero import make_prompts
    >>> from trl_vla.teachers import ScriptedLiberoExpert

    >>> trainer = VLAOPDTrainer(
    ...     model="path/to/student",  # an OpenVLA-family checkpoint
    ...     teacher_model=ScriptedLiberoExpert("libero_object"),  # or a VLA checkpoint with the same action space
    ...     args=VLAOPDConfig(output_dir="opd-student", prompts_per_step=8, num_generations=4),
    ...     train_dataset=make_prompts("libero_object"),
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The student: a VLA model (e.g. `OpenVLAForActionPrediction`) or a path to one. Its `forward` must accept
            `action_token_ids` and return `.action_logits`, and it must have `sample_actions` and `action_space`.
        teacher_model (`str`, [`~transformers.PreTrainedModel`] or [`ActionPolicy`]):
            A VLA model or path with the same `ActionSpace` as the student, or any object honouring the policy
            contract (e.g. `trl_vla.teachers.ScriptedLiberoExpert`). Defaults to `args.teacher_model_name_or_path`.
        args ([`VLAOPDConfig`], *optional*):
            Configuration.
        train_dataset ([`~datasets.Dataset`]):
            Prompts: columns `suite`, `task_id`, `init_state_id`, `instruction` (see `make_prompts`).
        eval_dataset ([`~datasets.Dataset`], *optional*):
            Prompts evaluated greedily (one episode each) by `evaluate()`.
        processing_class ([`~transformers.ProcessorMixin`], *optional*):
            The student's processor. Loaded from the student's path if `None`.
        teacher_processing_class ([`~transformers.ProcessorMixin`], *optional*):
            The teacher VLA's processor; defaults to the teacher's own (loaded from its path) or the student's.
        callbacks, optimizers: as in [`~transformers.Trainer`].
        peft_config ([`~peft.PeftConfig`], *optional*):
            Train a PEFT (e.g. LoRA) adapter on the student instead of all its weights.
        envs (*optional*):
            A simulator pool to roll out in (see `trl_vla.rollout`); by default one is created per process from the
            config (`num_envs`, `image_size`, ...) and closed when training ends.
    """

    _tag_names = ["trl", "trl-vla", "vla-opd", "robotics", "on-policy-distillation"]
    _name = "VLA-OPD"
    # The model card's account of the training method (`benchmark` and the config `args` are filled in).
    _card_method = (
        "**on-policy distillation** (VLA-OPD, [arXiv 2603.26666](https://huggingface.co/papers/2603.26666)): the "
        "student acted in the {benchmark} simulator, a frozen teacher scored every action token on the states the "
        "student visited, and the student minimised `{args.loss_type}` per action token"
    )
    _paper = {
        "title": "VLA-OPD: Bridging Offline SFT and Online RL for Vision-Language-Action Models via On-Policy "
        "Distillation",
        "id": "2603.26666",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhong2026vlaopd,
                title   = {{VLA-OPD: Bridging Offline SFT and Online RL for Vision-Language-Action Models via On-Policy Distillation}},
                author  = {Zhong and others},
                year    = 2026,
                journal = {arXiv preprint arXiv:2603.26666},
            }"""),
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        teacher_model: str | PreTrainedModel | ActionPolicy | None = None,
        args: VLAOPDConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: ProcessorMixin | None = None,
        teacher_processing_class: ProcessorMixin | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
        envs: Any = None,
    ):
        from ..models import VLAPolicy, load_vla

        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "student"
            args = VLAOPDConfig(f"{str(name).rstrip('/').split('/')[-1]}-VLA-OPD")
        if not isinstance(args, VLAOPDConfig):
            raise TypeError(f"`args` must be a `VLAOPDConfig`, got {type(args).__name__}.")

        # Teacher: a VLA (loaded here, prepared below like TRL prepares its teachers) or a policy-contract object.
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None:
            raise ValueError(
                "VLA-OPD needs a teacher: pass `teacher_model` (a VLA path or model, or a policy such as "
                "`ScriptedLiberoExpert`) or set `teacher_model_name_or_path`."
            )
        if isinstance(teacher_model, str):
            teacher_path = teacher_model
            teacher_model = load_vla(teacher_path, **(args.teacher_model_init_kwargs or {}))
            if teacher_processing_class is None:
                teacher_processing_class = AutoProcessor.from_pretrained(teacher_path)
        if not isinstance(teacher_model, (PreTrainedModel, ActionPolicy)):
            raise TypeError(
                "`teacher_model` must be a VLA model or follow the policy contract (action_space, build_inputs, "
                f"action_logits, sample_actions); got {type(teacher_model).__name__}."
            )

        self._init_student_and_trainer(
            model, args, train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config, envs
        )
        student = self.accelerator.unwrap_model(self.model)
        student.action_space.check_compatible(teacher_model.action_space, ("student", "teacher"))
        student_stats, teacher_stats = _norm_stats(student), _norm_stats(teacher_model)
        if student_stats is not None and teacher_stats is not None:
            check_norm_stats_compatible(student_stats, teacher_stats, ("student", "teacher"))

        if isinstance(teacher_model, PreTrainedModel):
            teacher_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
            elif self.is_fsdp_enabled:  # TRL 1.16's DistillationTrainer forgets this branch (trl#2580)
                teacher_model = prepare_fsdp(teacher_model, self.accelerator)
            else:
                teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
            self.teacher_model = teacher_model
            self.teacher_policy = VLAPolicy(teacher_model, teacher_processing_class or self.processing_class)
        else:
            self.teacher_model = None
            self.teacher_policy = teacher_model
        self.loss_fn = LOSSES[args.loss_type]
        self.beta = args.beta
        # The teacher-scored steps of the last `replay_rounds` rounds (student inputs only), oldest first.
        self._replay: collections.deque[dict[str, Any]] = collections.deque(maxlen=args.replay_rounds)

    def _env_kwargs(self) -> dict[str, Any]:
        kwargs = super()._env_kwargs()
        if getattr(self.teacher_policy, "needs_step_states", False):
            kwargs["record_step_states"] = True  # the teacher labels every executed action at its own state
        lookahead_policy = getattr(self.teacher_policy, "lookahead_policy", None)
        if lookahead_policy is not None:
            # the teacher labels each decision with the chunk it would execute itself from that state
            kwargs["lookahead_policy"] = lookahead_policy
            kwargs["lookahead_steps"] = self.teacher_policy.action_space.chunk_size
        return kwargs

    @torch.no_grad()
    def _teacher_logits(self, observations, instructions, action_token_ids) -> torch.Tensor:
        chunks = []
        size = self.args.teacher_batch_size
        for start in range(0, len(observations), size):
            inputs = self.teacher_policy.build_inputs(
                observations[start : start + size], instructions[start : start + size]
            )
            ids = action_token_ids[start : start + size]
            logits = self.teacher_policy.action_logits(inputs, ids.to(self._teacher_device(ids)))
            chunks.append(logits.float().cpu())
        return torch.cat(chunks)

    def _teacher_device(self, default: torch.Tensor) -> torch.device:
        if self.teacher_model is not None:
            return self.accelerator.device
        return default.device

    def _generate_and_score_completions(self, prompts: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        temperature = self.temperature if self.args.rollout_temperature is None else self.args.rollout_temperature
        rollout = self._rollout(prompts, temperature, self.args.num_generations)
        rollout_time = time.perf_counter() - start
        steps = rollout.steps()
        if len(steps["observations"]) == 0:
            raise RuntimeError(
                f"Every episode of this generation round ({len(prompts)} prompts) ended in a simulator fault before "
                "the policy acted; see the worker logs."
            )

        start = time.perf_counter()
        teacher_logits = self._teacher_logits(steps["observations"], steps["instructions"], steps["token_ids"])
        teacher_time = time.perf_counter() - start
        if not torch.isfinite(teacher_logits).all():
            bad = (~torch.isfinite(teacher_logits)).flatten(1).any(1).nonzero().flatten()[:5].tolist()
            raise FloatingPointError(
                f"The teacher ({type(self.teacher_policy).__name__}) produced NaN/inf action logits at training step "
                f"{self.state.global_step}, on decision steps {bad} of this round."
            )

        # By default every token the student produced is scored, executed or not: the teacher's target on a visited
        # state is valid for the whole chunk (unlike a reward, which only speaks for the actions that ran).
        action_mask = steps["executed_mask" if self.args.mask_unexecuted_actions else "action_mask"].float()

        self._log_rollout_metrics(rollout, rollout_time, mode)
        metrics = self._metrics[mode]
        metrics["time/teacher"].append(teacher_time)
        teacher_log_probs = torch.log_softmax(teacher_logits / self.temperature, -1)
        teacher_entropy = token_entropy(teacher_log_probs)
        metrics["teacher_entropy"].append(((teacher_entropy * action_mask).sum() / action_mask.sum()).item())

        scored = {
            # The student reads its camera images and proprioception; the privileged simulator states were the
            # teacher's and are not kept.
            "observations": [
                {k: v for k, v in obs.items() if k not in PRIVILEGED_KEYS} for obs in steps["observations"]
            ],
            "instructions": steps["instructions"],
            "action_token_ids": steps["token_ids"],
            "old_log_probs": steps["log_probs"],
            "action_mask": action_mask,
            "teacher_logits": teacher_logits,
        }
        if mode == "train" and self.args.replay_rounds > 0:
            replayed = list(self._replay)
            self._replay.append(scored)
            metrics["replay_fraction"].append(
                sum(len(r["action_mask"]) for r in replayed) / sum(len(r["action_mask"]) for r in [*replayed, scored])
            )
            scored = _concatenate([*replayed, scored])
        return scored

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        device = self.accelerator.device
        student_logits, action_token_ids = self._student_action_logits(model, inputs)  # [B, A, n_bins], [B, A]
        teacher_logits = inputs["teacher_logits"].to(device)
        mask = inputs["action_mask"].to(device)
        # Each rank divides its token sum by (global tokens / processes) so that DDP's gradient averaging yields
        # sum over all tokens / global token count (TRL's fix for gradient accumulation, trl#4719).
        num_items = inputs["num_items_in_batch"].to(device).clamp(min=1.0) / self.accelerator.num_processes
        space = self.accelerator.unwrap_model(model).action_space
        columns = ActionTokenizer.from_action_space(space).token_ids_to_columns(action_token_ids)
        loss = self.loss_fn(
            student_logits,
            teacher_logits,
            mask,
            temperature=self.temperature,
            num_items_in_batch=num_items,
            beta=self.beta,
            action_columns=columns,
            old_log_probs=inputs["old_log_probs"].to(device),
            clip_epsilon=self.args.clip_epsilon,
        )

        with torch.no_grad():
            log_s = torch.log_softmax(student_logits.float() / self.temperature, -1)
            log_t = torch.log_softmax(teacher_logits / self.temperature, -1)
            per_token = torch.stack(
                [
                    (log_s.exp() * (log_s - log_t)).sum(-1),  # reverse KL
                    token_entropy(log_s),
                    (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float(),  # argmax agreement
                ]
            )
            sums = torch.cat([(per_token * mask).sum((1, 2)), mask.sum().unsqueeze(0)])
        sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)
        count = sums[-1].clamp(min=1)
        metrics = self._metrics[mode]
        metrics["reverse_kl"].append((sums[0] / count).item())
        metrics["entropy"].append((sums[1] / count).item())
        metrics["argmax_agreement"].append((sums[2] / count).item())
        metrics["time/update"].append(time.perf_counter() - start)
        return (loss, student_logits) if return_outputs else loss


def _norm_stats(policy: Any) -> dict[str, Any] | None:
    """The BOUNDS_Q99 statistics a policy's bins mean: a VLA's `config.norm_stats[unnorm_key]`, or a policy object's
    `norm_stats` (the scripted expert's); `None` for a policy that declares none."""
    config = getattr(policy, "config", None)  # a PeftModel forwards `config` to its base model
    if config is not None and getattr(config, "norm_stats", None):
        return select_norm_stats(config.norm_stats, getattr(config, "unnorm_key", None))[1]
    stats = getattr(policy, "norm_stats", None)
    return dict(stats) if stats else None


def _concatenate(buffers: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate round buffers of decision steps along their first dimension (lists and tensors alike)."""
    return {
        key: sum((b[key] for b in buffers), [])
        if isinstance(buffers[0][key], list)
        else torch.cat([b[key] for b in buffers])
        for key in buffers[0]
    }
