from dataclasses import dataclass, field

from trl import SFTConfig

from .device_defaults import apply_device_defaults


CHUNK_PADDINGS = ("mask", "repeat")


@dataclass
class VLASFTConfig(SFTConfig):
    r"""
    Configuration class for [`VLASFTTrainer`]: offline supervised fine-tuning (behaviour cloning) of a
    vision-language-action policy on a demonstrations dataset, with cross-entropy on its action tokens.

    It extends [`trl.SFTConfig`]; the text-specific fields (`max_length`, `packing`, `padding_free`,
    `completion_only_loss`, `assistant_only_loss`, `dataset_text_field`, chat templates, ...) have no effect, since
    the targets are the action tokens of each demonstration frame, not text. `loss_type` keeps its meaning: `"nll"`
    (cross-entropy) or `"dft"` (the cross-entropy of each token weighted by its detached probability).

    Unlike TRL's configs, `bf16` left unset means float32 on CPU (bf16 on CUDA), and `dataloader_pin_memory` is off
    without CUDA (see `trl_vla.trainer.device_defaults`).

    > Parameters that control the targets

    chunk_padding (`str`, *optional*, defaults to `"mask"`):
        How a chunked student (`chunk_size > 1`) is supervised on the frames whose next `chunk_size` actions run past
        the end of their episode. The target chunk of frame `t` holds the actions of frames `t, ..., t + chunk_size - 1`
        of the same episode; the missing ones are filled with the episode's last action and either left out of the
        loss (`"mask"`: a policy never executes them, since the episode ends with success) or trained on
        (`"repeat"`: the policy learns to hold the final action).

    > [!NOTE]
    > Changed defaults relative to [`trl.SFTConfig`]: `learning_rate=1e-4`, activation (gradient) checkpointing off
    > (one VLA forward per observation is short), `remove_unused_columns=False` (the trainer picks its own columns).
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS

    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate for AdamW."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (off by default here)."}
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Keep the dataset's columns: the trainer reads the ones it needs (image, proprio, ...)."},
    )
    chunk_padding: str = field(
        default="mask",
        metadata={
            "help": "Targets past the end of an episode (chunked students): 'mask' leaves them out of the loss, "
            "'repeat' trains on the episode's last action.",
            "choices": list(CHUNK_PADDINGS),
        },
    )

    def __post_init__(self):
        apply_device_defaults(self)
        super().__post_init__()
        if self.chunk_padding not in CHUNK_PADDINGS:
            raise ValueError(f"`chunk_padding` must be one of {list(CHUNK_PADDINGS)}, got {self.chunk_padding!r}.")
