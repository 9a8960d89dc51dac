"""Model cards for VLA students: teacher, tasks, success before/after, learning curve and `model-index` results."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import torch
import transformers
import trl
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation import format_success
from .learning_curve import plot_learning_curve


TEMPLATE = "vla_model_card.md"
# Fields worth reading in a card; the rest of TrainingArguments is noise there.
CARD_CONFIG_FIELDS = (
    "loss_type", "temperature", "beta", "learning_rate", "lr_scheduler_type", "max_steps", "num_train_epochs",
    "prompts_per_step", "num_generations", "num_iterations", "gradient_accumulation_steps", "num_envs",
    "image_size", "cheap_rendering", "max_episode_steps", "seed",
)  # fmt: skip


def _fmt(entry: dict[str, float] | None) -> str:
    """An evaluation's success rate with its 95% Wilson interval and counts, e.g. `37.5% [18.5, 61.4] (6/16)`."""
    if entry is None:
        return "n/a"
    episodes = int(entry.get("eval_episodes", 0))
    if episodes == 0:
        return f"{100 * entry['eval_success_rate']:.1f}%"
    return format_success(round(entry["eval_success_rate"] * episodes), episodes)


def _teacher_name(trainer: Any) -> str:
    """The teacher checkpoint's name, a scripted teacher's class, or the reward for a trainer without teacher."""
    teacher = getattr(trainer, "teacher_policy", None)  # None for a trainer without teacher (GRPO)
    if teacher is None:
        return "none (sparse task-success reward)"
    if getattr(trainer, "teacher_model", None) is not None:
        config = trainer.accelerator.unwrap_model(trainer.teacher_model).config
        return getattr(config, "_name_or_path", None) or type(teacher).__name__
    return getattr(getattr(teacher, "config", None), "_name_or_path", None) or type(teacher).__name__


def _eval_result(success_rate: float, suites: list[str], task_ids: list[int]) -> EvalResult:
    return EvalResult(
        task_type="robotics",
        task_name="Robot manipulation",
        dataset_type=suites[0] if suites else "simulation",
        dataset_name=f"{', '.join(suites) or 'n/a'} (tasks {task_ids})",
        metric_type="success_rate",
        metric_name="Success rate",
        metric_value=success_rate,
    )


def write_model_card(trainer: Any, model_name: str | None = None, dataset_name: str | None = None, tags=None) -> str:
    """Render the card of `trainer` (a `VLAOPDTrainer`-like trainer) to `output_dir/README.md`; returns its path."""
    from ..version import __version__

    args = trainer.args
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    model_name = model_name or os.path.basename(os.path.normpath(out))
    config = trainer.accelerator.unwrap_model(trainer.model).config
    base_model = getattr(config, "_name_or_path", None)
    if not base_model or os.path.isdir(base_model):
        base_model = None

    prompts = trainer.train_dataset
    suites = sorted(set(prompts["suite"])) if prompts is not None else []
    suite = ", ".join(suites) or "n/a"
    task_ids = sorted(set(prompts["task_id"])) if prompts is not None else []

    history = [e for e in trainer.eval_history if "eval_success_rate" in e]
    before_entry = history[0] if history else None
    after_entry = history[-1] if len(history) > 1 else None
    before = before_entry["eval_success_rate"] if before_entry else None
    after = after_entry["eval_success_rate"] if after_entry else None
    curve = (
        "learning_curve.png"
        if plot_learning_curve(
            trainer.state.log_history, os.path.join(out, "learning_curve.png"), eval_history=trainer.eval_history
        )
        else None
    )

    eval_results = None
    if after is not None or before is not None:
        eval_results = [_eval_result(after if after is not None else before, suites, task_ids)]
    card_tags = sorted(set(tags or []) | set(trainer._tag_names))
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        model_name=model_name,
        tags=card_tags,
        datasets=[dataset_name] if dataset_name else None,
        eval_results=eval_results,
    )
    # Enums (e.g. `SchedulerType`) become their values so that the YAML stays plain.
    training_config = {
        k: getattr(getattr(args, k), "value", getattr(args, k)) for k in CARD_CONFIG_FIELDS if hasattr(args, k)
    }
    template = resources.files("trl_vla.model_cards") / TEMPLATE
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(),
        model_name=model_name,
        base_model=base_model,
        hub_model_id=args.hub_model_id,
        method=trainer._card_method.format(
            benchmark="LIBERO" if any(s.startswith("libero") for s in suites) else suite, args=args
        ),
        teacher=_teacher_name(trainer),
        suite=suite,
        task_ids=", ".join(map(str, task_ids)) or "n/a",
        env_steps=getattr(trainer, "env_steps", 0),
        global_step=trainer.state.global_step,
        eval_episodes=int(history[-1].get("eval_episodes", 0)) if history else 0,
        success_before=_fmt(before_entry),
        success_after=_fmt(after_entry),
        learning_curve=curve,
        training_config=yaml.safe_dump(training_config, sort_keys=False).strip(),
        trl_vla_version=__version__,
        trl_version=trl.__version__,
        transformers_version=transformers.__version__,
        pytorch_version=torch.__version__,
        citation=trainer._paper["citation"],
    )
    path = os.path.join(out, "README.md")
    card.save(path)
    return path
