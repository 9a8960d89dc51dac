"""trl_vla: on-policy distillation (VLA-OPD) for vision-language-action robot policies, as a TRL trainer extension.

Public names are imported lazily (PEP 562): simulator worker processes import `trl_vla.rollout` and `trl_vla.envs`
without paying for trl, transformers and peft (about 15 s of a worker's start on a 2-core CPU).
"""

import importlib
from typing import TYPE_CHECKING

from .version import __version__  # noqa: F401  (re-exported: `trl_vla.__version__`)


_EXPORTS = {
    "ActionSpace": "action_tokenizer",
    "ActionTokenizer": "action_tokenizer",
    "compute_norm_stats": "action_tokenizer",
    "identity_norm_stats": "action_tokenizer",
    "normalize_actions": "action_tokenizer",
    "select_norm_stats": "action_tokenizer",
    "unnormalize_actions": "action_tokenizer",
    "ActionPolicy": "policy",
    "sample_from_logits": "policy",
    "VLAGRPOConfig": "trainer",
    "VLAGRPOTrainer": "trainer",
    "VLAOPDConfig": "trainer",
    "VLAOPDTrainer": "trainer",
    "VLASFTConfig": "trainer",
    "VLASFTTrainer": "trainer",
}

__all__ = [
    "ActionPolicy",
    "ActionSpace",
    "ActionTokenizer",
    "VLAGRPOConfig",
    "VLAGRPOTrainer",
    "VLAOPDConfig",
    "VLAOPDTrainer",
    "VLASFTConfig",
    "VLASFTTrainer",
    "compute_norm_stats",
    "identity_norm_stats",
    "normalize_actions",
    "sample_from_logits",
    "select_norm_stats",
    "unnormalize_actions",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:
    from .action_tokenizer import (
        ActionSpace,
        ActionTokenizer,
        compute_norm_stats,
        identity_norm_stats,
        normalize_actions,
        select_norm_stats,
        unnormalize_actions,
    )
    from .policy import ActionPolicy, sample_from_logits
    from .trainer import VLAGRPOConfig, VLAGRPOTrainer, VLAOPDConfig, VLAOPDTrainer, VLASFTConfig, VLASFTTrainer
