"""What every trainer that learns from simulator rollouts shares: the prompts dataloader, the generation-round
buffer, the simulator pool, student rollouts, rollout metrics, greedy evaluation, the model card and the Hub.

`VLAOPDTrainer` (teacher-scored rollouts) and `VLAGRPOTrainer` (success-rewarded rollouts) mix this into their TRL
parents; each supplies `_generate_and_score_completions` (what a round's buffer holds) and `compute_loss`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from accelerate.utils import gather_object, set_seed
from transformers import PreTrainedModel, ProcessorMixin, TrainerCallback
from transformers.trainer_callback import ExportableState
from trl.models import unwrap_model_for_generation
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import RepeatSampler, identity, shuffle_sequence_dict

from ..envs.base import PROMPT_COLUMNS
from .media_logging import log_media
from .model_card import write_model_card
from .student_setup import load_student


@dataclass
class RolloutArguments:
    """Configuration fields shared by the rollout trainers (mixed into `VLAOPDConfig` and `VLAGRPOConfig`)."""

    prompts_per_step: int = field(
        default=64, metadata={"help": "Prompts (task, init state) per generation round over all processes."}
    )
    num_generations: int = field(default=8, metadata={"help": "Episodes per prompt in a generation round (G)."})
    num_iterations: int = field(
        default=1, metadata={"help": "Passes over a generation round's buffer (each of num_minibatches steps)."}
    )
    num_minibatches: int = field(
        default=1, metadata={"help": "Optimizer steps per pass over a generation round's buffer (its minibatches)."}
    )
    num_envs: int = field(default=2, metadata={"help": "Simulator worker processes per process (rank)."})
    image_size: int = field(default=128, metadata={"help": "Camera resolution rendered by the simulator."})
    cheap_rendering: bool = field(
        default=False, metadata={"help": "Turn shadows and reflections off (faster, but off the demo distribution)."}
    )
    max_episode_steps: int | None = field(
        default=None, metadata={"help": "Override of the suite's standard episode limit (environment steps)."}
    )
    open_loop_steps: int | None = field(
        default=None, metadata={"help": "Actions of each chunk executed before re-querying (default: whole chunk)."}
    )
    rollout_timeout: float = field(
        default=300.0, metadata={"help": "Seconds a worker may take for one step before it is restarted."}
    )
    num_videos: int = field(default=2, metadata={"help": "Rollout videos saved at each evaluation."})

    def _check_rollout_arguments(self) -> None:
        for name in ("prompts_per_step", "num_generations", "num_iterations", "num_minibatches", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.num_envs < 0:
            raise ValueError(f"`num_envs` must be >= 0 (0 runs the simulator in-process), got {self.num_envs}.")
        if self.prompts_per_step % self.world_size != 0:
            raise ValueError(
                f"`prompts_per_step` ({self.prompts_per_step}) must be divisible by the number of processes "
                f"({self.world_size}): each process runs its own share of the prompts."
            )
        if self.open_loop_steps is not None and self.open_loop_steps < 1:
            raise ValueError(f"`open_loop_steps` must be positive, got {self.open_loop_steps}.")


class RolloutProgress(TrainerCallback, ExportableState):
    """What a rollout trainer accumulates over a run and its reports read: the cumulative env steps (the x axis of
    every learning curve and of the model card) and the evaluation history (the curve's success points, the card's
    before/after rows).

    Saved in every checkpoint as a stateful callback of `trainer_state.json` and restored when training resumes from
    one, so that a resumed run logs and reports what the uninterrupted run would.
    """

    def __init__(self, env_steps: int = 0, eval_history: list[dict[str, float]] | None = None):
        self.env_steps = int(env_steps)
        self.eval_history = list(eval_history or [])

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"env_steps": self.env_steps, "eval_history": self.eval_history}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):  # resumed: the checkpoint's counts replace this run's
            self.env_steps = int(saved["attributes"]["env_steps"])
            self.eval_history = list(saved["attributes"]["eval_history"])
        return control


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle depends only on `(seed, epoch)`.

    `RepeatSampler` draws each epoch's permutation from one generator that lives as long as the sampler, so a run
    resumed from a checkpoint would walk the prompts in another order than the uninterrupted run. `Trainer` calls
    `set_epoch` before every epoch; re-seeding there makes the order reproducible across resumes.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


def split_round(buffer: dict[str, Any], num_chunks: int) -> list[dict[str, Any]]:
    """Split a round's buffer along its first dimension into `num_chunks` near-equal micro-batches (none empty while
    there are at least `num_chunks` steps). Scalars (0-d tensors) are shared by every chunk."""
    size = len(buffer["action_token_ids"])
    bounds = [round(i * size / num_chunks) for i in range(num_chunks + 1)]
    return [
        {k: v if isinstance(v, torch.Tensor) and v.ndim == 0 else v[lo:hi] for k, v in buffer.items()}
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def check_prompts_dataset(dataset: Any, name: str = "train_dataset") -> None:
    """Fail before any rollout when a prompts dataset lacks the columns the rollout engine needs."""
    if dataset is None:
        return
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"`{name}` must be a `datasets.Dataset` of prompts (build one with "
            f"`trl_vla.envs.libero.make_prompts(suite)`), got {type(dataset).__name__}."
        )
    missing = [c for c in PROMPT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"`{name}` lacks the prompt columns {missing} (it has {dataset.column_names}); each row must name the "
            "simulator task to roll out: build it with `trl_vla.envs.libero.make_prompts(suite)`."
        )
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty.")


class RolloutTrainerMixin:
    """Shared machinery of the rollout trainers; see the module docstring."""

    def _init_student_and_trainer(
        self,
        model: str | PreTrainedModel,
        args: Any,
        train_dataset: datasets.Dataset | None,
        eval_dataset: datasets.Dataset | None,
        processing_class: ProcessorMixin | None,
        callbacks: list[TrainerCallback] | None,
        optimizers: tuple,
        peft_config: Any,
        envs: Any,
    ) -> None:
        """Load the student (and its processor), wrap it with PEFT, and run `transformers.Trainer`'s set-up."""
        check_prompts_dataset(train_dataset, "train_dataset")
        check_prompts_dataset(eval_dataset, "eval_dataset")
        if train_dataset is not None and len(train_dataset) < args.prompts_per_step:
            # The sampler only yields whole generation rounds: fewer prompts than one round would train nothing.
            raise ValueError(
                f"`prompts_per_step` ({args.prompts_per_step}) exceeds the {len(train_dataset)} prompts of "
                "`train_dataset`: lower `prompts_per_step` or add prompts (more init states or tasks)."
            )
        set_seed(args.seed)
        model, processing_class = load_student(
            model, processing_class, args.model_init_kwargs, peft_config, args.gradient_checkpointing
        )
        _BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model.add_model_tags(self._tag_names)
        self.temperature = args.temperature
        self.shuffle_dataset = args.shuffle_dataset
        self.log_completions = False  # the parents' text-completion tables do not apply
        self._step = 0
        self._current_train_step_time = 0.0  # read by the TRL parents' training_step
        self._buffered_inputs = None
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._envs = envs
        self._owns_envs = envs is None
        self.add_callback(RolloutProgress())
        set_seed(args.seed, device_specific=True)

    # ------------------------------------------------------------------------------------------------------------
    # Data: one dataloader batch = this process's prompts of one generation round, repeated for every training step
    # of the round so that the Trainer's bookkeeping (epochs, resume skipping) counts rounds correctly.
    # ------------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(PROMPT_COLUMNS)

    @property
    def _micro_batches_per_pass(self) -> int:
        """Micro-batches a generation round's buffer is split into: `gradient_accumulation_steps` for each of its
        `num_minibatches` optimizer steps."""
        return self.args.gradient_accumulation_steps * self.args.num_minibatches

    @property
    def _steps_per_round(self) -> int:
        """Training steps (micro-batches) per generation round, over its `num_iterations` passes."""
        return self._micro_batches_per_pass * self.args.num_iterations

    @property
    def optimizer_steps_per_round(self) -> int:
        """Optimizer steps (`state.global_step` increments) each generation round gives: `num_minibatches` for each
        of its `num_iterations` passes. A callback that acts once per round checks `global_step % this == 0`."""
        return self.args.num_minibatches * self.args.num_iterations

    @property
    def _progress(self) -> RolloutProgress:
        # Looked up each time: resuming with `restore_callback_states_from_checkpoint` replaces the callback object.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RolloutProgress))

    @property
    def env_steps(self) -> int:
        """Environment steps of all training rollouts so far, over processes (restored on resume)."""
        return self._progress.env_steps

    @property
    def eval_history(self) -> list[dict[str, float]]:
        """Every `evaluate()` of this run: its step, env steps and metrics (restored on resume)."""
        return self._progress.eval_history

    def get_train_dataloader(self):
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.args.prompts_per_step // self.accelerator.num_processes,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=1,
            batch_size=self.args.prompts_per_step,
            repeat_count=self._steps_per_round,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _prepare_inputs(self, generation_batch: list[dict[str, Any]]) -> dict[str, Any]:
        if self._step % self._steps_per_round == 0 or self._buffered_inputs is None:
            # `_buffered_inputs is None` also after resuming from a checkpoint mid-round.
            round_buffer = shuffle_sequence_dict(self._generate_and_score_completions(generation_batch))
            self._buffered_inputs = self._split_round(round_buffer)
        return self._buffered_inputs[self._step % self._micro_batches_per_pass]

    def _split_round(self, buffer: dict[str, Any]) -> list[dict[str, Any]]:
        """Split a (shuffled) round buffer into its micro-batches, each holding as `num_items_in_batch` the global
        count (over processes) of valid action tokens of its optimizer step's minibatch: each step's loss is the mean
        over the tokens of its own minibatch (TRL's normalisation for gradient accumulation and DDP)."""
        size, count = len(buffer["action_token_ids"]), self._micro_batches_per_pass
        if size < count:
            raise ValueError(
                f"This generation round has {size} decision steps on this process, fewer than its {count} "
                "micro-batches (gradient_accumulation_steps x num_minibatches): lower those, or roll out more "
                "episodes per round (prompts_per_step, num_generations)."
            )
        micro_batches = split_round(buffer, count)
        gas = self.args.gradient_accumulation_steps
        tokens = torch.stack([batch["action_mask"].sum() for batch in micro_batches]).view(-1, gas).sum(1)
        tokens = self.accelerator.gather(tokens.to(self.accelerator.device)).view(-1, len(tokens)).sum(0)
        for index, batch in enumerate(micro_batches):
            batch["num_items_in_batch"] = tokens[index // gas]
        return micro_batches

    # ------------------------------------------------------------------------------------------------------------
    # Rollouts and teacher scoring
    # ------------------------------------------------------------------------------------------------------------

    @property
    def envs(self):
        """The simulator pool of this process, created on first use (worker logs in `output_dir/logs/`)."""
        if self._envs is None:
            from ..rollout import make_env_pool

            # Worker output (the simulator libraries' warnings and prints) goes to files, the console keeps the
            # progress and the metrics.
            log_dir = os.path.join(self.args.output_dir, "logs", f"process-{self.accelerator.process_index}")
            self._envs = make_env_pool(
                num_workers=self.args.num_envs,
                step_timeout=self.args.rollout_timeout,
                log_dir=log_dir,
                **self._env_kwargs(),
            )
        return self._envs

    def _env_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every simulator environment of the pool this trainer creates."""
        config = self.accelerator.unwrap_model(self.model).config
        return {
            "image_size": self.args.image_size,
            "wrist_camera": getattr(config, "num_images", 1) > 1,
            "cheap_rendering": self.args.cheap_rendering,
        }

    def close(self) -> None:
        """Shut down the simulator workers this trainer started."""
        if self._envs is not None and self._owns_envs:
            self._envs.close()
            self._envs = None

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self.close()

    def _student_policy(self, model):
        from ..models import VLAPolicy

        return VLAPolicy(model, self.processing_class)

    def _student_action_logits(self, model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute, with gradients, the student's action logits `[B, A, n_bins]` on a buffered micro-batch, through
        the (possibly DDP/DeepSpeed-wrapped) `model`'s forward; returns them with the action token ids `[B, A]`."""
        policy = self._student_policy(model)
        student_inputs = policy.build_inputs(inputs["observations"], inputs["instructions"])
        action_token_ids = inputs["action_token_ids"].to(self.accelerator.device)
        logits = policy.action_logits(student_inputs, action_token_ids)
        if not torch.isfinite(logits).all():
            raise FloatingPointError(
                f"The student produced NaN/inf action logits at training step {self.state.global_step}."
            )
        return logits, action_token_ids

    def _rollout(
        self, prompts: list[dict[str, Any]], temperature: float, num_generations: int, video_episodes: Any = ()
    ):
        from ..rollout import collect_rollouts

        rows = [dict(p) for p in prompts for _ in range(num_generations)]
        prompt_ds = datasets.Dataset.from_list([{c: r[c] for c in PROMPT_COLUMNS} for r in rows])
        with warnings.catch_warnings():
            # TRL 1.16 reads the deprecated `is_gradient_checkpointing` when entering and leaving this context: the
            # FutureWarning is TRL's, not the user's.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            with unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ) as unwrapped:
                was_training = unwrapped.training
                unwrapped.eval()
                rollout = collect_rollouts(
                    self._student_policy(unwrapped),
                    self.envs,
                    prompt_ds,
                    temperature=temperature,
                    max_episode_steps=self.args.max_episode_steps,
                    open_loop_steps=self.args.open_loop_steps,
                    progress=False,
                    video_episodes=video_episodes,
                )
                unwrapped.train(was_training)
        return rollout

    def _log_rollout_metrics(self, rollout: Any, rollout_time: float, mode: str) -> None:
        """Gather the round's episode statistics over processes and record them in `self._metrics[mode]`."""
        stats = rollout.stats()
        gathered = self.accelerator.gather_for_metrics(
            torch.tensor(
                [stats["num_episodes"], stats["successes"], stats["env_steps"], stats["faults"]],
                dtype=torch.float64,
                device=self.accelerator.device,
            ).unsqueeze(0)
        ).sum(0)
        episodes, successes, env_steps, faults = gathered.tolist()
        if mode == "train":
            self._progress.env_steps += int(env_steps)
        metrics = self._metrics[mode]
        metrics["success_rate"].append(successes / max(episodes, 1))
        metrics["episode_length"].append(env_steps / max(episodes, 1))
        metrics["env_steps"].append(float(self.env_steps))
        metrics["env_steps_per_second"].append(stats["env_steps"] / max(rollout_time, 1e-9))
        metrics["worker_faults"].append(faults)
        metrics["time/rollout"].append(rollout_time)

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation: greedy rollouts of the student on the evaluation prompts
    # ------------------------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Roll the student out greedily once per evaluation prompt and report its success rate.

        Videos of the first `num_videos` episodes go to `output_dir/videos/`, and to the `report_to` back-ends that
        take media (`trl_vla.trainer.media_logging`).
        """
        from ..rollout import save_video

        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        check_prompts_dataset(dataset, "eval_dataset")
        if dataset is None:
            raise ValueError("`evaluate()` needs an `eval_dataset` of prompts.")
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        shard = [dataset[i] for i in range(rank, len(dataset), world)]
        start = time.perf_counter()
        # The episodes saved as videos are rendered at every env step (the others at decisions only).
        videos = range(self.args.num_videos) if self.accelerator.is_main_process else ()
        rollout = self._rollout(shard, temperature=0.0, num_generations=1, video_episodes=videos) if shard else None
        successes = rollout.success.tolist() if rollout is not None else []
        all_successes = gather_object(successes)
        metrics = {
            f"{metric_key_prefix}_success_rate": sum(all_successes) / max(len(all_successes), 1),
            f"{metric_key_prefix}_episodes": float(len(all_successes)),
            f"{metric_key_prefix}_runtime": time.perf_counter() - start,
        }
        if rollout is not None and self.accelerator.is_main_process and self.args.num_videos > 0:
            video_dir = os.path.join(self.args.output_dir, "videos")
            os.makedirs(video_dir, exist_ok=True)
            videos, frames = {}, {}
            for episode in range(min(self.args.num_videos, rollout.num_episodes)):
                outcome = "success" if successes[episode] else "failure"
                path = os.path.join(video_dir, f"step{self.state.global_step:06d}_ep{episode}_{outcome}.mp4")
                tag = f"{metric_key_prefix}/video_{episode}"
                frames[tag] = rollout.frames(episode)
                save_video(frames[tag], path)
                videos[tag] = path
        self.eval_history.append({"step": self.state.global_step, "env_steps": float(self.env_steps), **metrics})
        self.log(metrics)  # first: the back-ends' callbacks (re)open their runs when they log
        if rollout is not None and self.accelerator.is_main_process and self.args.num_videos > 0:
            log_media(self, videos=videos, frames=frames)
        return metrics

    # ------------------------------------------------------------------------------------------------------------
    # Model card and the Hub
    # ------------------------------------------------------------------------------------------------------------

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        """Write `output_dir/README.md` from `model_cards/vla_model_card.md`, with the teacher, the tasks, the
        success before and after training (from `evaluate()` calls), the learning curve and the training config, and
        the results as `model-index` metadata."""
        if not self.is_world_process_zero():
            return
        write_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
        curve = os.path.join(self.args.output_dir, "learning_curve.png")
        if os.path.exists(curve):
            log_media(self, images={"learning_curve": curve})

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Save the student, its processor and the model card locally, then upload them. A failed upload loses
        nothing: the error says where the files are and how to push them later."""
        self.save_model(self.args.output_dir)
        self.create_model_card(**{k: v for k, v in kwargs.items() if k in ("model_name", "dataset_name", "tags")})
        try:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        except Exception as err:  # network, auth or repo errors all leave the local copy as the source of truth
            raise RuntimeError(
                f"Pushing to the Hub failed ({type(err).__name__}: {err}). Nothing is lost: the model, processor and "
                f"model card are saved in {self.args.output_dir!r}; upload them later with "
                f"`hf upload <repo_id> {self.args.output_dir}`."
            ) from err
