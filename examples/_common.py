"""What the LIBERO rollout examples (`opd_libero.py`, `grpo_libero.py`) share: the arguments of the tiny CPU
student, making it, and the before/after table.

Both examples start from the same initial student when no `--model_name_or_path` is given: a tiny OpenVLA
few-shot SFT'd on scripted demonstrations with identity action statistics (LIBERO's controller units), so that an
OPD run and a GRPO run from the CPU defaults compare the same policy. Scripts import this module by name: Python puts
a script's own folder first on `sys.path`, also under `accelerate launch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig

from trl_vla import identity_norm_stats
from trl_vla.evaluation import format_success


@dataclass
class CheckpointArguments:
    """How to read a released checkpoint whose `config.json` does not say how it decodes (OpenVLA-OFT's)."""

    checkpoint_decoding: str | None = field(
        default=None,
        metadata={"help": "Decoding of the --model_name_or_path checkpoint (OpenVLA-OFT discrete: parallel)."},
    )
    checkpoint_chunk_size: int | None = field(
        default=None, metadata={"help": "Action chunk of that checkpoint (OpenVLA-OFT on LIBERO: 8)."}
    )

    def checkpoint_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `from_pretrained` for the checkpoint."""
        kwargs = {"decoding": self.checkpoint_decoding, "chunk_size": self.checkpoint_chunk_size}
        return {key: value for key, value in kwargs.items() if value is not None}


@dataclass
class LiberoScriptArguments(CheckpointArguments):
    """What to train on. The student is `--model_name_or_path` (ModelConfig), or a tiny OpenVLA made on the fly."""

    suite: str = field(default="libero_object", metadata={"help": "LIBERO suite."})
    task_ids: list[int] = field(default_factory=lambda: [0], metadata={"help": "Tasks of the suite to train on."})
    init_state_ids: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3],
        metadata={"help": "Init states of each task used as training prompts (-1: all 50)."},
    )
    eval_init_state_ids: list[int] = field(
        default_factory=lambda: list(range(16, 32)),
        metadata={
            "help": "Init states evaluated greedily before and after training (-1: all 50). The default, 16 init "
            "states the run does not train on, is the fewest that tell a 25-point change from noise."
        },
    )
    tiny_decoding: str = field(
        default="parallel", metadata={"help": "Decoding of the tiny student: parallel (OFT-style) or autoregressive."}
    )
    tiny_chunk_size: int = field(default=8, metadata={"help": "Action chunk of the tiny student."})
    sft_demos_per_task: int = field(
        default=4,
        metadata={"help": "Scripted demonstrations per task for the tiny student's few-shot SFT (0: no SFT)."},
    )
    sft_epochs: float = field(default=12.0, metadata={"help": "Epochs of the tiny student's few-shot SFT."})


def ids_or_all(ids: list[int], count: int = 50) -> list[int]:
    """`[-1]` means every init state of a task."""
    return list(range(count)) if ids == [-1] else ids


def prepare_student(script_args: LiberoScriptArguments, training_args: Any, model_args: ModelConfig) -> str:
    """The student's checkpoint: `--model_name_or_path`, or a tiny OpenVLA written to `output_dir/student_init` (kept
    there, so that the initial and the trained student can be compared)."""
    if model_args.model_name_or_path is not None:
        return model_args.model_name_or_path
    path = os.path.join(training_args.output_dir, "student_init")
    if script_args.sft_demos_per_task > 0 and training_args.world_size > 1:
        raise ValueError(
            "The tiny student's few-shot SFT runs in a single process. With several processes, pass "
            "`--sft_demos_per_task 0`, or SFT once with examples/sft_libero.py and pass `--model_name_or_path`."
        )
    # One process builds the student; the others wait for it and load it.
    with training_args.main_process_first(desc="making the tiny student"):
        if training_args.process_index == 0:
            _make_tiny_student(script_args, training_args, path)
    return path


def _make_tiny_student(script_args: LiberoScriptArguments, training_args: Any, path: str) -> None:
    from trl_vla.teachers import collect_demonstrations
    from trl_vla.testing import make_tiny_sft_student

    demos = None
    if script_args.sft_demos_per_task > 0:
        demos = collect_demonstrations(
            script_args.suite, script_args.task_ids, episodes_per_task=script_args.sft_demos_per_task,
            image_size=training_args.image_size,
        )  # fmt: skip
    make_tiny_sft_student(
        path,
        demos,
        script_args.suite,
        # The scripted teacher acts over the controller's whole range: statistics from a few demonstrations would
        # clip its corrective actions out of the student's reach.
        norm_stats=identity_norm_stats(),
        decoding=script_args.tiny_decoding,
        chunk_size=script_args.tiny_chunk_size,
        seed=training_args.seed,
        sft_kwargs={
            "output_dir": os.path.join(training_args.output_dir, "sft"),
            "num_train_epochs": script_args.sft_epochs,
            "use_cpu": training_args.use_cpu,
            "bf16": training_args.bf16,
        },
    )


def print_before_after(method: str, before: float, after: float, episodes: int, output_dir: str) -> None:
    """The table scripts read: a header with `(N greedy episodes)`, a `before` and an `after` row ending in `X%`,
    then the 95% Wilson intervals."""
    width = 34
    print(f"\n{'':{width}} success rate ({episodes} greedy episodes)")
    print(f"{f'student before {method}':{width}} {100 * before:5.1f}%")
    print(f"{f'student after {method}':{width}} {100 * after:5.1f}%")
    print(
        f"95% Wilson intervals: before {format_success(round(before * episodes), episodes)}, "
        f"after {format_success(round(after * episodes), episodes)}"
    )
    print(f"Model, model card, videos and learning curve: {output_dir}")
