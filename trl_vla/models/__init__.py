"""VLA models that emit discrete action tokens, and the policy glue the trainers use."""

from .openvla import OpenVLAConfig, OpenVLAForActionPrediction, OpenVLAImageProcessor, OpenVLAProcessor
from .vla_policy import VLAPolicy, as_policy, load_vla
from .vlm_policy import VLMActionConfig, VLMActionProcessor, VLMForActionPrediction


__all__ = [
    "OpenVLAConfig",
    "OpenVLAForActionPrediction",
    "OpenVLAImageProcessor",
    "OpenVLAProcessor",
    "VLAPolicy",
    "VLMActionConfig",
    "VLMActionProcessor",
    "VLMForActionPrediction",
    "as_policy",
    "load_vla",
]
