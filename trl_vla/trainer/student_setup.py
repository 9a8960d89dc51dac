"""Loading the student a trainer trains: shared by the SFT trainer and the rollout trainers (OPD, GRPO)."""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin


__all__ = ["load_student"]


def load_student(
    model: str | PreTrainedModel,
    processing_class: ProcessorMixin | None,
    model_init_kwargs: dict[str, Any] | None = None,
    peft_config: Any = None,
    gradient_checkpointing: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The student model and its processor, PEFT-wrapped when `peft_config` is given.

    Args:
        model: A checkpoint path or Hub id (loaded with `trl_vla.models.load_vla(model, **model_init_kwargs)`, its
            processor with `AutoProcessor` unless `processing_class` is given), or an instantiated VLA model.
        processing_class: The student's processor; required with an instantiated model.
        model_init_kwargs: Keyword arguments of `load_vla` (e.g. `dtype`).
        peft_config: A `peft` config (e.g. `LoraConfig`) to wrap the student with.
        gradient_checkpointing: With PEFT, make the frozen embeddings' outputs require grad, as gradient
            checkpointing through a frozen input layer needs.
    """
    from ..models import load_vla

    if isinstance(model, str):
        model_path = model
        model = load_vla(model, **(model_init_kwargs or {}))
        if processing_class is None:
            processing_class = AutoProcessor.from_pretrained(model_path)
    if processing_class is None:
        raise ValueError("Pass the student's `processing_class` when `model` is an instantiated model.")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return model, processing_class
