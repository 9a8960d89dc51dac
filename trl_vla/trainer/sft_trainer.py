"""`VLASFTTrainer`: offline supervised fine-tuning (behaviour cloning) of a VLA on demonstrations, as a
`trl.SFTTrainer`.

Each dataset row is one demonstration frame (the columns of `trl_vla.teachers.collect_demonstrations`). Before
training, every row gets its target action tokens: the next `chunk_size` continuous actions of its episode (or the
first `chunk_size` actions of its `action_chunk`, the demonstrator's plan from that frame, when the dataset has one),
normalised with the student's `norm_stats[unnorm_key]` and encoded by the student's `ActionTokenizer`
(`action_token_ids` `[A]`, with `action_mask` `[A]` marking the tokens that count). Each training step builds the
student's inputs from the frames through its processor (the policy contract's `build_inputs`), teacher-forces the
target tokens and takes the cross-entropy over the action bins, normalised by the global count of valid action tokens.

Maintenance note: `SFTTrainer.__init__` tokenises text datasets and patches the model's forward with a fused LM head
that only exists for causal LMs, so this trainer calls `_BaseTrainer.__init__` directly (as `VLAOPDTrainer` does) and
reuses the parent's `log`, `training_step` and `_save_checkpoint`.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel, ProcessorMixin, TrainerCallback
from trl import SFTTrainer
from trl.trainer.base_trainer import _BaseTrainer

from ..action_tokenizer import ActionTokenizer, compute_norm_stats, normalize_actions, select_norm_stats
from ..losses import token_entropy
from .sft_config import VLASFTConfig
from .student_setup import load_student


__all__ = [
    "DEMONSTRATION_COLUMNS",
    "VLASFTTrainer",
    "add_norm_stats",
    "build_chunk_targets",
    "tokenize_demonstrations",
]

DEMONSTRATION_COLUMNS = ("image", "instruction", "action", "episode_index", "frame_index")
"""Columns a demonstrations dataset must have (optional: `proprio`, `wrist_image`, and `action_chunk`, a
`[chunk, action_dim]` target chunk per frame that replaces the next executed actions)."""

_OBSERVATION_COLUMNS = ("image", "wrist_image", "proprio")


def check_demonstrations(dataset: Any, name: str = "train_dataset") -> None:
    """Fail with an actionable message when `dataset` is not a demonstrations `datasets.Dataset`."""
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"`{name}` must be a `datasets.Dataset` of demonstration frames (e.g. from "
            f"`trl_vla.teachers.collect_demonstrations`), got {type(dataset).__name__}."
        )
    missing = [c for c in DEMONSTRATION_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"`{name}` lacks the demonstration columns {missing} (it has {dataset.column_names}). Each row must be one "
            f"frame: {list(DEMONSTRATION_COLUMNS)} (as `trl_vla.teachers.collect_demonstrations` produces them)."
        )
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty.")


def build_chunk_targets(
    episode_index: Sequence[int],
    frame_index: Sequence[int],
    actions: np.ndarray,
    chunk_size: int,
    padding: str = "mask",
) -> tuple[np.ndarray, np.ndarray]:
    """The target action chunk of every frame: the actions of frames `t, ..., t + chunk_size - 1` of its episode.

    Args:
        episode_index, frame_index: `[N]` episode and frame of each row (rows may come in any order).
        actions: `[N, D]` the action executed at each row.
        chunk_size: Actions per chunk.
        padding: Beyond the episode's last frame the chunk repeats the last action; `"mask"` marks those entries
            invalid, `"repeat"` keeps them valid.

    Returns:
        `(targets [N, chunk_size, D], valid [N, chunk_size] bool)`, in the rows' order.
    """
    if padding not in ("mask", "repeat"):
        raise ValueError(f"`padding` must be 'mask' or 'repeat', got {padding!r}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive, got {chunk_size}.")
    episode_index = np.asarray(episode_index, np.int64)
    frame_index = np.asarray(frame_index, np.int64)
    actions = np.asarray(actions, np.float64)
    if actions.ndim != 2 or len(actions) != len(episode_index) or len(frame_index) != len(episode_index):
        raise ValueError(
            f"Expected `actions` [N, D] with N = len(episode_index) = len(frame_index); got {actions.shape}, "
            f"{len(episode_index)}, {len(frame_index)}."
        )
    order = np.lexsort((frame_index, episode_index))  # rows sorted by episode, then frame
    episodes, frames = episode_index[order], frame_index[order]
    same_episode = episodes[1:] == episodes[:-1]
    gaps = same_episode & (frames[1:] != frames[:-1] + 1)
    if gaps.any():
        where = int(np.flatnonzero(gaps)[0])
        raise ValueError(
            f"Episode {episodes[where]} has non-consecutive frames ({frames[where]} then {frames[where + 1]}): "
            "chunk targets need every frame of an episode (do not filter frames out of a demonstrations dataset)."
        )
    # Last sorted position of each row's episode.
    starts = np.flatnonzero(np.concatenate([[True], ~same_episode]))
    ends = np.concatenate([starts[1:], [len(order)]]) - 1
    episode_end = np.repeat(ends, np.diff(np.concatenate([starts, [len(order)]])))
    positions = np.arange(len(order))[:, None] + np.arange(chunk_size)[None, :]  # [N, chunk] in sorted order
    valid = positions <= episode_end[:, None]
    sorted_targets = actions[order][np.minimum(positions, episode_end[:, None])]  # [N, chunk, D]
    if padding == "repeat":
        valid = np.ones_like(valid)
    targets = np.empty_like(sorted_targets)
    targets[order] = sorted_targets
    row_valid = np.empty_like(valid)
    row_valid[order] = valid
    return targets.astype(np.float32), row_valid


def tokenize_demonstrations(
    dataset: datasets.Dataset, action_space: Any, norm_stats: dict[str, Any], padding: str = "mask"
) -> datasets.Dataset:
    """Add the columns `action_token_ids` `[A]` (int64) and `action_mask` `[A]` (float32) to a demonstrations dataset:
    the target chunk of each frame (`build_chunk_targets`, or the first `chunk_size` actions of the row's
    `action_chunk` when the dataset has that column, every token valid), normalised with `norm_stats` and encoded in
    `action_space`'s chunk-major token order."""
    check_demonstrations(dataset, "dataset")
    columns = dataset.select_columns(["episode_index", "frame_index", "action"]).with_format("numpy")[:]
    actions = np.stack(columns["action"]).astype(np.float64)  # also for variable-length (object) rows
    if actions.shape[-1] != action_space.action_dim:
        raise ValueError(
            f"The demonstrations' actions are {actions.shape[-1]}-D but the student's action space is "
            f"{action_space.action_dim}-D."
        )
    if "action_chunk" in dataset.column_names:
        chunks = np.asarray(dataset.with_format("numpy")["action_chunk"], np.float64)  # [N, plan, D]
        if chunks.ndim != 3 or chunks.shape[1] < action_space.chunk_size or chunks.shape[2] != action_space.action_dim:
            raise ValueError(
                f"The demonstrations' `action_chunk` rows have shape {chunks.shape[1:]}, but the student needs "
                f"({action_space.chunk_size} or more, {action_space.action_dim}); record them with "
                f"`collect_demonstrations(..., plan_chunk_size={action_space.chunk_size})` or drop the column."
            )
        targets = chunks[:, : action_space.chunk_size]
        valid = np.ones(targets.shape[:2], bool)
    else:
        targets, valid = build_chunk_targets(
            columns["episode_index"], columns["frame_index"], actions, action_space.chunk_size, padding
        )
    tokenizer = ActionTokenizer.from_action_space(action_space)
    token_ids = tokenizer.encode(normalize_actions(targets, norm_stats)).reshape(len(dataset), -1)
    mask = np.repeat(valid, action_space.action_dim, axis=1).astype(np.float32)  # chunk-major, like the tokens
    dataset = dataset.remove_columns([c for c in ("action_token_ids", "action_mask") if c in dataset.column_names])
    dataset = dataset.add_column("action_token_ids", list(token_ids))
    return dataset.add_column("action_mask", list(mask))


def add_norm_stats(model: PreTrainedModel, dataset: Any, unnorm_key: str | None = None) -> dict[str, Any]:
    """Compute BOUNDS_Q99 statistics of a demonstrations dataset's actions and store them in the model's config as
    `norm_stats[unnorm_key]` (also making `unnorm_key` the config's default key when it has none).

    Call it before SFT on a student whose statistics should come from these demonstrations. Returns the statistics.
    """
    config = model.config
    key = unnorm_key or getattr(config, "unnorm_key", None)
    if key is None:
        raise ValueError("Pass `unnorm_key`, the name under which to store the statistics (e.g. the LIBERO suite).")
    stats = compute_norm_stats(dataset)
    config.norm_stats = {**(getattr(config, "norm_stats", None) or {}), key: stats}
    if getattr(config, "unnorm_key", None) is None:
        config.unnorm_key = key
    return stats


class VLASFTTrainer(SFTTrainer):
    """
    Offline SFT (behaviour cloning) of a vision-language-action policy on demonstrations: cross-entropy on the action
    tokens of each demonstration frame. The "pure SFT" baseline of VLA-OPD, and the few-shot initialisation of its
    student.

    Example:

    ```python
    >>> from trl_vla import VLASFTConfig, VLASFTTrainer
    >>> from trl_vla.teachers import collect_demonstrations

    >>> demos = collect_demonstrations("libero_object", task_ids=[0], episodes_per_task=1)
    >>> trainer = VLASFTTrainer(
    ...     model="path/to/student",  # an OpenVLA-family checkpoint whose norm_stats cover the demos
    ...     args=VLASFTConfig(output_dir="sft-student", num_train_epochs=20),
    ...     train_dataset=demos,
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str` or [`~transformers.PreTrainedModel`]):
            The student VLA or a path to one. Its forward must accept `action_token_ids` and return `.action_logits`;
            it must have `action_space` and `config.norm_stats[action_space.unnorm_key]` (see `add_norm_stats`).
        args ([`VLASFTConfig`], *optional*):
            Configuration.
        train_dataset ([`~datasets.Dataset`]):
            Demonstration frames: `image` (HxWx3 uint8 or a `datasets.Image`), `instruction`, `action` (continuous,
            in the environment's units), `episode_index`, `frame_index`; optionally `proprio`, `wrist_image` and
            `action_chunk` (a target chunk per frame, e.g. the demonstrator's plan).
        eval_dataset ([`~datasets.Dataset`], *optional*):
            Held-out demonstration frames; `evaluate()` reports their loss, token accuracy and entropy.
        processing_class ([`~transformers.ProcessorMixin`], *optional*):
            The student's processor. Loaded from the student's path if `None`.
        callbacks, optimizers: as in [`~transformers.Trainer`].
        peft_config ([`~peft.PeftConfig`], *optional*):
            Train a PEFT (e.g. LoRA) adapter instead of all the student's weights.
    """

    _tag_names = ["trl", "trl-vla", "sft", "robotics", "behaviour-cloning"]
    _name = "VLA-SFT"
    # Training losses are divided by the accumulated batch's global token count (`_get_num_items_in_batch`), so the
    # Trainer must not divide them by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: VLASFTConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: ProcessorMixin | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "student"
            args = VLASFTConfig(f"{str(name).rstrip('/').split('/')[-1]}-VLA-SFT")
        if not isinstance(args, VLASFTConfig):
            raise TypeError(f"`args` must be a `VLASFTConfig`, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("`train_dataset` (a demonstrations `datasets.Dataset`) is required.")
        check_demonstrations(train_dataset, "train_dataset")
        if eval_dataset is not None:
            check_demonstrations(eval_dataset, "eval_dataset")

        set_seed(args.seed)
        model, processing_class = load_student(
            model, processing_class, args.model_init_kwargs, peft_config, args.gradient_checkpointing
        )
        space = model.action_space
        _, stats = select_norm_stats(getattr(model.config, "norm_stats", None), space.unnorm_key)
        train_dataset = tokenize_demonstrations(train_dataset, space, stats, args.chunk_padding)
        if eval_dataset is not None:
            eval_dataset = tokenize_demonstrations(eval_dataset, space, stats, args.chunk_padding)
        _BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=self._collate,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model.add_model_tags(self._tag_names)
        self.maybe_activation_offload_context = contextlib.nullcontext()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._action_space, self._norm_stats = space, stats

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss, token accuracy and entropy on held-out demonstration frames (`eval_dataset`, or the trainer's)."""
        if isinstance(eval_dataset, datasets.Dataset) or (
            eval_dataset is not None and not isinstance(eval_dataset, str)
        ):
            check_demonstrations(eval_dataset, "eval_dataset")
            eval_dataset = tokenize_demonstrations(
                eval_dataset, self._action_space, self._norm_stats, self.args.chunk_padding
            )
        # `SFTTrainer.evaluate` would tokenise text; the Trainer's own loop is what applies here.
        return super(SFTTrainer, self).evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    # ------------------------------------------------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*_OBSERVATION_COLUMNS, "instruction", "action_token_ids", "action_mask"]

    @staticmethod
    def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        observations = [
            {
                key: np.asarray(row[key], np.uint8 if key != "proprio" else np.float32)
                for key in _OBSERVATION_COLUMNS
                if key in row
            }
            for row in rows
        ]
        return {
            "observations": observations,
            "instructions": [row["instruction"] for row in rows],
            "action_token_ids": torch.tensor(np.stack([row["action_token_ids"] for row in rows]), dtype=torch.long),
            "action_mask": torch.tensor(np.stack([row["action_mask"] for row in rows]), dtype=torch.float32),
        }

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        # The loss is normalised by the count of valid action tokens over the whole accumulated batch on every process
        # (transformers counts `labels`, which these batches do not have).
        count = sum(batch["action_mask"].sum() for batch in batch_samples).to(device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from ..models import VLAPolicy

        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        device = self.accelerator.device
        policy = VLAPolicy(model, self.processing_class)
        action_token_ids = inputs["action_token_ids"].to(device)
        mask = inputs["action_mask"].to(device)
        logits = policy.action_logits(
            policy.build_inputs(inputs["observations"], inputs["instructions"]), action_token_ids
        )
        if not torch.isfinite(logits).all():
            raise FloatingPointError(
                f"The student produced NaN/inf action logits at training step {self.state.global_step}."
            )
        space = self.accelerator.unwrap_model(model).action_space
        columns = ActionTokenizer.from_action_space(space).token_ids_to_columns(action_token_ids)  # [B, A]
        log_probs = torch.log_softmax(logits.float(), -1)  # [B, A, n_bins]
        token_log_probs = log_probs.gather(-1, columns.unsqueeze(-1)).squeeze(-1)  # [B, A]
        per_token = -token_log_probs
        if self.args.loss_type == "dft":  # Dynamic Fine-Tuning (arXiv 2508.05629): weight by the detached probability
            per_token = per_token * token_log_probs.detach().exp()
        if num_items_in_batch is None:
            denominator = mask.sum().clamp(min=1.0)
        else:
            # Each rank divides by (global tokens / processes), so that DDP's gradient averaging yields the sum over all
            # tokens divided by the global token count.
            denominator = (
                torch.as_tensor(num_items_in_batch, device=device).clamp(min=1.0) / self.accelerator.num_processes
            )
        loss = (per_token * mask).sum() / denominator

        with torch.no_grad():
            entropy = token_entropy(log_probs)
            correct = (logits.argmax(-1) == columns).float()
            sums = torch.stack([(entropy * mask).sum(), (correct * mask).sum(), mask.sum()])
        sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)
        count = sums[2].clamp(min=1)
        metrics = self._metrics[mode]
        metrics["entropy"].append((sums[0] / count).item())
        metrics["mean_token_accuracy"].append((sums[1] / count).item())
        metrics["time/update"].append(time.perf_counter() - start)
        return (loss, logits) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
