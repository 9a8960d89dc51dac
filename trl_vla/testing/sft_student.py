"""Factories for tests, examples and benchmarks that need a trained student without a download.

`make_tiny_sft_student` builds a tiny OpenVLA (`trl_vla.testing.make_tiny_openvla`) and fine-tunes it with
`VLASFTTrainer` on scripted demonstrations: a trainer-level helper, so it lives above the model and trainer layers
(models never import trainers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..action_tokenizer import compute_norm_stats, identity_norm_stats
from ..models.openvla import OpenVLAForActionPrediction, OpenVLAProcessor
from ..trainer.sft_config import VLASFTConfig
from ..trainer.sft_trainer import VLASFTTrainer
from .tiny_models import make_tiny_openvla


__all__ = ["make_tiny_sft_student"]


def make_tiny_sft_student(
    path: str,
    demos: Any = None,
    unnorm_key: str = "libero_object",
    *,
    norm_stats: Mapping[str, Any] | None = None,
    decoding: str = "parallel",
    chunk_size: int = 8,
    use_proprio: bool = False,
    seed: int = 0,
    sft_kwargs: Mapping[str, Any] | None = None,
    **tiny_kwargs: Any,
) -> str:
    """Write a tiny OpenVLA student to `path`, SFT'd on `demos`: the few-shot initial student of the examples and
    benchmarks (VLA-OPD's student is SFT'd on one demonstration per task before distillation).

    Args:
        path: Output directory (the checkpoint and its processor).
        demos: A demonstrations `datasets.Dataset` (`trl_vla.teachers.collect_demonstrations`) to SFT on. `None`
            writes the untrained student.
        unnorm_key: Key of the statistics, the suite's name by convention.
        norm_stats: The student's action statistics (`{"action": {...}}`, e.g. `identity_norm_stats()`); by default
            the demos' BOUNDS_Q99 statistics (identity statistics without demos). Statistics from a few
            demonstrations cover only the range those demonstrations used: a teacher's corrective actions beyond it
            are clipped to the end bins, out of the student's reach. For a teacher acting over the controller's whole
            range (the scripted LIBERO expert), pass `identity_norm_stats()`.
        decoding, chunk_size, use_proprio, **tiny_kwargs: Passed on to `make_tiny_openvla`.
        seed: Seeds the initial weights and the SFT.
        sft_kwargs: `VLASFTConfig` fields of the SFT over its defaults here: `output_dir` `path/sft`, 12 epochs at
            batch size 32 and learning rate 1e-3, CPU, no checkpoints, no reporting.

    Returns:
        `path`.
    """
    make_tiny_openvla(
        path,
        decoding=decoding,
        chunk_size=chunk_size,
        norm_stats={
            unnorm_key: norm_stats or (compute_norm_stats(demos) if demos is not None else identity_norm_stats())
        },
        unnorm_key=unnorm_key,
        use_proprio=use_proprio,
        seed=seed,
        **tiny_kwargs,
    )
    if demos is None:
        return path
    config = {
        "output_dir": os.path.join(path, "sft"),
        "num_train_epochs": 12.0,
        "per_device_train_batch_size": 32,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "seed": seed,
        "logging_steps": 20,
        **(sft_kwargs or {}),
    }
    trainer = VLASFTTrainer(
        model=OpenVLAForActionPrediction.from_pretrained(path),
        args=VLASFTConfig(**config),
        train_dataset=demos,
        processing_class=OpenVLAProcessor.from_pretrained(path),
    )
    trainer.train()
    trainer.save_model(path)
    return path
