"""Factories for tests, examples and benchmarks: tiny, real checkpoints made offline (nothing downloads), and the
few-shot SFT'd tiny student. Test and demo factories, not model code: the models never import them."""

from .released_layout import make_released_openvla
from .sft_student import make_tiny_sft_student
from .tiny_models import make_tiny_openvla, make_tiny_tokenizer, make_tiny_vlm_policy, tiny_llama_config


__all__ = [
    "make_released_openvla",
    "make_tiny_openvla",
    "make_tiny_sft_student",
    "make_tiny_tokenizer",
    "make_tiny_vlm_policy",
    "tiny_llama_config",
]
