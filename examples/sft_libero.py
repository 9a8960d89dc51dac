# /// script
# dependencies = ["trl-vla[libero]"]
# ///
"""
Offline SFT (behaviour cloning) of a VLA on LIBERO demonstrations: cross-entropy on the action tokens of every
demonstration frame. The "pure SFT" baseline of VLA-OPD, and the few-shot initialisation of its student (one
demonstration per task).

The demonstrations come from the privileged scripted expert (`trl_vla.teachers.collect_demonstrations`), or from a
saved `datasets.Dataset` with the same columns (`--dataset_path`). The student's action normalisation statistics are
computed from the demonstrations when it has none under `--unnorm_key`. Before and after training the student is
evaluated greedily on LIBERO; `output_dir` receives the model and its processor.

CPU default, offline (no argument: a tiny OpenVLA student made on the fly, one scripted demonstration of
LIBERO-Object task 0):

```bash
python examples/sft_libero.py
```

The VLA-OPD student initialisation (one demonstration per task of a suite):

```bash
python examples/sft_libero.py --suite libero_spatial --task_ids 0 1 2 3 4 5 6 7 8 9 --demos_per_task 1 \
    --output_dir outputs/sft_1demo
```

A real checkpoint on GPUs, on saved demonstrations:

```bash
accelerate launch examples/sft_libero.py --model_name_or_path <checkpoint> --dataset_path <saved dataset> \
    --suite libero_spatial --unnorm_key libero_spatial --per_device_train_batch_size 16 --bf16 --num_train_epochs 5
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import datasets
from trl import ModelConfig, TrlParser, get_peft_config

from trl_vla import VLASFTConfig, VLASFTTrainer
from trl_vla.action_tokenizer import compute_norm_stats
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
from trl_vla.testing import make_tiny_openvla
from trl_vla.trainer.sft_trainer import add_norm_stats


@dataclass
class ScriptArguments:
    """What to fine-tune on. The student is `--model_name_or_path` (ModelConfig), or a tiny OpenVLA made on the fly."""

    suite: str = field(default="libero_object", metadata={"help": "LIBERO suite."})
    task_ids: list[int] = field(default_factory=lambda: [0], metadata={"help": "Tasks of the suite."})
    demos_per_task: int = field(default=1, metadata={"help": "Scripted demonstrations per task (init states 0..)."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "A saved demonstrations dataset (`save_to_disk`) instead of scripted demos."}
    )
    unnorm_key: str | None = field(
        default=None, metadata={"help": "Key of the student's norm_stats for these demos (default: the suite)."}
    )
    eval_episodes_per_task: int = field(
        default=4, metadata={"help": "Greedy evaluation episodes per task before and after SFT (0: none)."}
    )
    tiny_chunk_size: int = field(default=8, metadata={"help": "Action chunk of the tiny student."})


def main(script_args: ScriptArguments, training_args: VLASFTConfig, model_args: ModelConfig) -> dict:
    from trl_vla.evaluation import evaluate_policy
    from trl_vla.teachers.demonstrations import collect_demonstrations

    unnorm_key = script_args.unnorm_key or script_args.suite
    if script_args.dataset_path is not None:
        demos = datasets.load_from_disk(script_args.dataset_path)
    else:
        demos = collect_demonstrations(
            script_args.suite, script_args.task_ids, episodes_per_task=script_args.demos_per_task
        )
    model_path = model_args.model_name_or_path
    if model_path is None:
        model_path = os.path.join(training_args.output_dir, "student_init")
        make_tiny_openvla(
            model_path,
            decoding="parallel",
            chunk_size=script_args.tiny_chunk_size,
            norm_stats={unnorm_key: compute_norm_stats(demos)},
            unnorm_key=unnorm_key,
            seed=training_args.seed,
        )
    model = OpenVLAForActionPrediction.from_pretrained(model_path)
    processor = OpenVLAProcessor.from_pretrained(model_path)
    if unnorm_key not in (model.config.norm_stats or {}):
        add_norm_stats(model, demos, unnorm_key)

    def evaluate(m):
        if script_args.eval_episodes_per_task == 0:
            return None
        policy = VLAPolicy(m.eval(), processor)
        results = evaluate_policy(
            policy,
            script_args.suite,
            script_args.task_ids,
            script_args.eval_episodes_per_task,
            seed=training_args.seed,
        )
        return results["success_rate"]

    before = evaluate(model)
    trainer = VLASFTTrainer(
        model=model,
        args=training_args,
        train_dataset=demos,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    after = evaluate(trainer.model)
    if trainer.accelerator.is_main_process and before is not None:
        episodes = script_args.eval_episodes_per_task * len(script_args.task_ids)
        print(f"\nsuccess rate ({episodes} greedy episodes): before SFT {100 * before:.1f}%, after {100 * after:.1f}%")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.suite)
    return {"before": before, "after": after}


def make_parser(subparsers=None):
    dataclass_types = (ScriptArguments, VLASFTConfig, ModelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("sft_libero", help="VLA SFT on LIBERO", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    # The CPU default: a tiny student on one demonstration, a few minutes on 2 cores.
    parser.set_defaults(
        output_dir="outputs/sft_libero",
        num_train_epochs=30,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=0,
    )
    return parser


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(fail_with_unknown_args=True)
    main(script_args, training_args, model_args)
