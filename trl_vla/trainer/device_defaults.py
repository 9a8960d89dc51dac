"""What the trainers' configs assume when no CUDA device is there (shared by the OPD, GRPO and SFT configs).

TRL's configs default to bf16 mixed precision (`bf16=None` becomes `True`), which suits GPUs. On a CPU the same
default silently runs every forward under bf16 autocast: slower there, and not the numbers the model was evaluated
with in float32. A small VLA's greedy closed-loop behaviour is sensitive to that (measured: a tiny OpenVLA student
succeeds in 8/16 LIBERO episodes in float32 and in 2/16 under CPU bf16 autocast, with the same weights).
"""

from __future__ import annotations

from typing import Any

import torch


__all__ = ["apply_device_defaults"]


def apply_device_defaults(args: Any) -> None:
    """Resolve a config's device-dependent defaults in place, before `TrainingArguments.__post_init__` runs.

    - `bf16=None` (not chosen) becomes `False` on CPU (`use_cpu`, or no CUDA device), `True` otherwise (TRL's
      default); an explicit `bf16=True` on CPU is kept.
    - `dataloader_pin_memory` is turned off without CUDA: nothing to pin to, and torch warns about it every epoch.
    """
    on_cpu = args.use_cpu or not torch.cuda.is_available()
    if args.bf16 is None and on_cpu:
        args.bf16 = False
    if args.dataloader_pin_memory and not torch.cuda.is_available():
        args.dataloader_pin_memory = False
