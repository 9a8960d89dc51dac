"""OpenVLA natively on transformers 5: `OpenVLAConfig`, `OpenVLAForActionPrediction`, `OpenVLAProcessor`.

Importing this package registers them with the Auto classes (`AutoConfig`, `AutoModelForImageTextToText`,
`AutoImageProcessor`, `AutoProcessor`) under the model type "openvla", the one in released OpenVLA `config.json`
files, so those checkpoints load without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from .configuration_openvla import OpenVLAConfig
from .modeling_openvla import OpenVLAForActionPrediction, OpenVLAOutput, OpenVLAPreTrainedModel
from .processing_openvla import (
    PROMPT_TEMPLATE,
    OpenVLAImageProcessor,
    OpenVLAProcessor,
    PrismaticImageProcessor,
    PrismaticProcessor,
)


AutoConfig.register(OpenVLAConfig.model_type, OpenVLAConfig, exist_ok=True)
AutoModelForImageTextToText.register(OpenVLAConfig, OpenVLAForActionPrediction, exist_ok=True)
# Released checkpoints name the remote-code classes `PrismaticImageProcessor` / `PrismaticProcessor`; the Auto classes
# resolve class names through these registrations, so those names load the native processors (no remote code).
AutoImageProcessor.register(
    OpenVLAConfig,
    image_processor_classes={"torchvision": OpenVLAImageProcessor, "prismatic": PrismaticImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(OpenVLAConfig, OpenVLAProcessor, exist_ok=True)
PROCESSOR_MAPPING.register(PrismaticProcessor, PrismaticProcessor, exist_ok=True)

__all__ = [
    "PROMPT_TEMPLATE",
    "OpenVLAConfig",
    "OpenVLAForActionPrediction",
    "OpenVLAImageProcessor",
    "OpenVLAOutput",
    "OpenVLAPreTrainedModel",
    "OpenVLAProcessor",
]
