# /// script
# dependencies = ["trl-vla[libero]"]
# ///
"""
On-policy distillation (VLA-OPD, arXiv 2603.26666) of a VLA student on LIBERO.

The student acts in LIBERO; the teacher scores every action token on the student's own states; the student
minimises KL(student || teacher) per token. Before and after training the student is evaluated greedily, and
`output_dir` receives the model, its processor, the model card (`README.md`), rollout videos and a learning curve.

CPU default, offline (no argument: a tiny OpenVLA student made on the fly and fine-tuned on a few scripted
demonstrations, the privileged scripted expert as teacher, LIBERO-Object task 0):

```bash
accelerate launch examples/opd_libero.py
```

A shorter run, elsewhere:

```bash
accelerate launch examples/opd_libero.py --max_steps 2 --output_dir /tmp/opd
```

Two CPU processes (each with its own simulator workers), as CI tests it:

```bash
accelerate launch --config_file accelerate_configs/cpu.yaml examples/opd_libero.py \
    --max_steps 1 --prompts_per_step 2 --sft_demos_per_task 0
```

The paper's setting on GPUs (an OpenVLA-OFT student SFT'd on one demonstration per task, an expert VLA teacher with
the same action space and normalisation key):

```bash
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml examples/opd_libero.py \
    --model_name_or_path <student checkpoint> --teacher_model_name_or_path <teacher checkpoint> \
    --suite libero_spatial --task_ids 0 1 2 3 4 5 6 7 8 9 --init_state_ids -1 \
    --prompts_per_step 64 --num_generations 8 --temperature 1.6 --learning_rate 5e-6 --bf16 \
    --num_envs 8 --image_size 224 --max_steps 100 --eval_strategy steps --eval_steps 10
```

LoRA student: add `--use_peft --lora_r 32 --lora_target_modules all-linear`. YAML configs: `--config my.yaml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from _common import LiberoScriptArguments, ids_or_all, prepare_student, print_before_after
from trl import ModelConfig, TrlParser, get_peft_config

from trl_vla import VLAOPDConfig, VLAOPDTrainer, select_norm_stats
from trl_vla.envs.libero import make_prompts
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor


@dataclass
class ScriptArguments(LiberoScriptArguments):
    """What to distil on, and the scripted teacher used when no `--teacher_model_name_or_path` is given."""

    teacher_sigma: float = field(
        default=0.05,
        metadata={"help": "Width of the scripted teacher's Gaussian over bins, in the robot's controller units."},
    )
    teacher_chunk_targets: str = field(
        default="closed_loop",
        metadata={
            "help": "What the scripted teacher scores chunk position k against: closed_loop (its own action at the "
            "state the executed chunk reached), lookahead (the k-th action of the chunk it would execute itself from "
            "the decision's state, simulated ahead) or plan (its open-loop plan from the decision's state)."
        },
    )


def main(script_args: ScriptArguments, training_args: VLAOPDConfig, model_args: ModelConfig) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_path = prepare_student(script_args, training_args, model_args)
    model = OpenVLAForActionPrediction.from_pretrained(model_path, **script_args.checkpoint_kwargs())
    processor = OpenVLAProcessor.from_pretrained(model_path)

    teacher = training_args.teacher_model_name_or_path
    if teacher is None:
        from trl_vla.teachers import ScriptedLiberoExpert

        _, stats = select_norm_stats(model.config.norm_stats, model.config.unnorm_key)
        teacher = ScriptedLiberoExpert(
            script_args.suite,
            action_space=model.action_space,
            norm_stats=stats,
            sigma=script_args.teacher_sigma,
            chunk_targets=script_args.teacher_chunk_targets,
        )

    train_prompts = make_prompts(script_args.suite, script_args.task_ids, ids_or_all(script_args.init_state_ids))
    eval_prompts = make_prompts(script_args.suite, script_args.task_ids, ids_or_all(script_args.eval_init_state_ids))
    trainer = VLAOPDTrainer(
        model=model,
        teacher_model=teacher,
        args=training_args,
        train_dataset=train_prompts,
        eval_dataset=eval_prompts,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    try:
        before = trainer.evaluate()["eval_success_rate"]
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        after = trainer.evaluate()["eval_success_rate"]
        episodes = len(eval_prompts)
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card(model_name=os.path.basename(os.path.normpath(training_args.output_dir)))
    finally:
        trainer.close()
    if trainer.accelerator.is_main_process:
        print_before_after("OPD", before, after, episodes, training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.suite)
    return {"before": before, "after": after}


def make_parser(subparsers=None):
    dataclass_types = (ScriptArguments, VLAOPDConfig, ModelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("opd_libero", help="VLA-OPD on LIBERO", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    # The CPU default, 5-7 minutes on 2 cores (measured): 8 rounds of 4 prompts x 2 episodes, episodes cut at
    # 128 env steps (the expert needs about 86 on LIBERO-Object task 0; uncapped, failing episodes ran 280 steps and
    # a round took 5 minutes), before/after evaluation under the same cap.
    parser.set_defaults(
        output_dir="outputs/opd_libero",
        max_steps=8,
        max_episode_steps=128,
        prompts_per_step=4,
        num_generations=2,
        num_envs=2,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        temperature=1.0,
        bf16=False,
        report_to="none",
        save_strategy="no",
        num_videos=2,
        seed=0,
    )
    return parser


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(fail_with_unknown_args=True)
    main(script_args, training_args, model_args)
