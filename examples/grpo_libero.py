# /// script
# dependencies = ["trl-vla[libero]"]
# ///
"""
GRPO of a VLA on LIBERO with the sparse 0/1 success reward (the SimpleVLA-RL recipe, the "pure RL" baseline of
VLA-OPD), and the paper's best recipe, "Distill + GRPO": GRPO started from a VLA-OPD student.

Each round the student samples `num_generations` episodes per prompt (task, init state); an episode's reward is 1 if
the task succeeded; advantages are group-relative; the update is PPO's clipped surrogate with the asymmetric clip
[1 - 0.2, 1 + 0.28]. Before and after training the student is evaluated greedily; `output_dir` receives the model,
its processor, the model card and rollout videos.

CPU default, offline (no argument: a tiny OpenVLA student made on the fly and fine-tuned on a few scripted
demonstrations, LIBERO-Object task 0). A tiny student with no success at all gets no gradient from a sparse reward
(every group is all-fail): this is the "bootstrap wall" that motivates distillation first.

```bash
accelerate launch examples/grpo_libero.py
```

Distill + GRPO (VLA-OPD's sequential recipe: OPD first, then GRPO on the sparse reward from the distilled student):

```bash
accelerate launch examples/opd_libero.py --output_dir outputs/opd
accelerate launch examples/grpo_libero.py --model_name_or_path outputs/opd --output_dir outputs/opd_grpo
```

The paper's setting on GPUs (SimpleVLA-RL's LIBERO recipe: 64 prompts x 8 episodes, temperature 1.6, lr 5e-6
constant, clip 0.2 / 0.28; for Distill + GRPO pass the VLA-OPD student):

```bash
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml examples/grpo_libero.py \
    --model_name_or_path <student or VLA-OPD checkpoint> --suite libero_spatial \
    --task_ids 0 1 2 3 4 5 6 7 8 9 --init_state_ids -1 \
    --prompts_per_step 64 --num_generations 8 --temperature 1.6 --learning_rate 5e-6 --bf16 \
    --num_envs 8 --image_size 224 --max_steps 100 --eval_strategy steps --eval_steps 10
```

LoRA student: add `--use_peft --lora_r 32 --lora_target_modules all-linear`. YAML configs: `--config my.yaml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from _common import LiberoScriptArguments, ids_or_all, prepare_student, print_before_after
from trl import ModelConfig, TrlParser, get_peft_config

from trl_vla import VLAGRPOConfig, VLAGRPOTrainer
from trl_vla.envs.libero import make_prompts
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor


@dataclass
class ScriptArguments(LiberoScriptArguments):
    """What to train on (GRPO's CPU default SFTs the tiny student longer: it has no teacher to learn from)."""

    sft_epochs: float = field(default=30.0, metadata={"help": "Epochs of the tiny student's few-shot SFT."})


def main(script_args: ScriptArguments, training_args: VLAGRPOConfig, model_args: ModelConfig) -> dict:
    model_path = prepare_student(script_args, training_args, model_args)

    train_prompts = make_prompts(script_args.suite, script_args.task_ids, ids_or_all(script_args.init_state_ids))
    eval_prompts = make_prompts(script_args.suite, script_args.task_ids, ids_or_all(script_args.eval_init_state_ids))
    trainer = VLAGRPOTrainer(
        model=OpenVLAForActionPrediction.from_pretrained(model_path, **script_args.checkpoint_kwargs()),
        args=training_args,
        train_dataset=train_prompts,
        eval_dataset=eval_prompts,
        processing_class=OpenVLAProcessor.from_pretrained(model_path),
        peft_config=get_peft_config(model_args),
    )
    try:
        before = trainer.evaluate()["eval_success_rate"]
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        after = trainer.evaluate()["eval_success_rate"]
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card(model_name=os.path.basename(os.path.normpath(training_args.output_dir)))
    finally:
        trainer.close()
    if trainer.accelerator.is_main_process:
        print_before_after("GRPO", before, after, len(eval_prompts), training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.suite)
    return {"before": before, "after": after}


def make_parser(subparsers=None):
    dataclass_types = (ScriptArguments, VLAGRPOConfig, ModelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("grpo_libero", help="GRPO on LIBERO", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    # The CPU default: the OPD example's protocol (episodes cut at 128 env steps, 16 held-out evaluation episodes).
    parser.set_defaults(
        output_dir="outputs/grpo_libero",
        max_steps=8,
        max_episode_steps=128,
        prompts_per_step=2,
        num_generations=4,
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
