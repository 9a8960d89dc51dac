# /// script
# dependencies = ["trl-vla"]
# ///
"""
On-policy distillation (VLA-OPD, arXiv 2603.26666) of a VLA student on RoboTwin 2.0 (dual-arm, 14-D joint actions in
chunks of 25: OpenVLA-OFT's ALOHA setting).

The student acts in RoboTwin; the teacher VLA scores every action token on the student's own states; the student
minimises KL(student || teacher) per token. The student is evaluated greedily before and after training, and
`output_dir` receives the model, its processor, the model card, rollout videos and a learning curve.

RoboTwin 2.0 needs an NVIDIA GPU with CUDA and Vulkan and its assets from the Hugging Face Hub; install it first
(docs/robotwin.md, or the docstring of `trl_vla.envs.robotwin`):

```bash
git clone https://github.com/RoboTwin-Platform/RoboTwin.git && cd RoboTwin
bash script/_install.sh && bash script/_download_assets.sh && python script/test_render.py
export ROBOTWIN_ROOT=$PWD && cd -
```

The paper's setting (a student SFT'd on RoboTwin demonstrations, an expert teacher with the same action space and
normalisation key, OFT's discrete parallel decoding with 14 x 25 = 350 action tokens per decision), on one GPU:

```bash
accelerate launch examples/opd_robotwin.py \
    --model_name_or_path <student checkpoint> --teacher_model_name_or_path <teacher checkpoint> \
    --tasks pick_dual_bottles place_empty_cup handover_block stack_bowls_two --seeds -1 --eval_seeds 0 1 2 3 4 \
    --prompts_per_step 16 --num_generations 8 --temperature 1.6 --learning_rate 5e-6 --bf16 \
    --num_envs 8 --image_size 224 --max_steps 100 --eval_strategy steps --eval_steps 10 --rollout_timeout 1800
```

On several GPUs: `--config_file accelerate_configs/deepspeed_zero3.yaml` (each process runs its own `--num_envs`
RoboTwin workers on its GPU). LoRA student: add `--use_peft --lora_r 32 --lora_target_modules all-linear`.

A pipeline check after installing RoboTwin, without checkpoints (a randomly initialised tiny student, and a perturbed
copy of it as teacher: it exercises RoboTwin, the rollouts and the trainer, and learns nothing useful):

```bash
python examples/opd_robotwin.py --tasks beat_block_hammer --max_steps 1 --prompts_per_step 2 --num_generations 1 \
    --num_envs 1 --max_episode_steps 50 --output_dir /tmp/opd_robotwin
```

RoboTwin episodes are long (RoboTwin's limits are 400 to 1700 actions per task; SimpleVLA-RL trains with 100 to 800)
and each reset first lets RoboTwin's scripted expert play the scene (its evaluation protocol, `--expert_check`), so
raise `--rollout_timeout` well above LIBERO's default.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
from trl import ModelConfig, TrlParser, get_peft_config

from trl_vla import VLAOPDConfig, VLAOPDTrainer
from trl_vla.envs.robotwin import (
    ROBOTWIN_ACTION_DIM,
    ROBOTWIN_CHUNK_SIZE,
    ROBOTWIN_SUITE,
    bounds_norm_stats,
    make_robotwin_env,
    make_robotwin_prompts,
)
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
from trl_vla.rollout import make_env_pool
from trl_vla.testing import make_tiny_openvla


@dataclass
class ScriptArguments:
    """What to distil on. The student is `--model_name_or_path` (ModelConfig), or a tiny OpenVLA made on the fly."""

    tasks: list[str] = field(
        default_factory=lambda: ["beat_block_hammer"], metadata={"help": "RoboTwin 2.0 tasks to train on."}
    )
    seeds: list[int] = field(
        default_factory=lambda: list(range(8)),
        metadata={"help": "Episode seeds (init_state_id) of each task used as training prompts (-1: 0..99)."},
    )
    eval_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3],
        metadata={"help": "Episode seeds evaluated greedily before and after training (-1: 0..99, RoboTwin's 100)."},
    )
    robotwin_seed: int = field(
        default=0, metadata={"help": "RoboTwin's evaluation seed: episode k runs scene seed 100000 * (1 + seed) + k."}
    )
    task_config: str = field(
        default="demo_clean", metadata={"help": "RoboTwin task config: demo_clean or demo_randomized."}
    )
    expert_check: bool = field(
        default=True,
        metadata={"help": "Skip scenes RoboTwin's scripted expert cannot solve (its evaluation protocol)."},
    )
    robotwin_root: str | None = field(
        default=None, metadata={"help": "The RoboTwin checkout (default: $ROBOTWIN_ROOT)."}
    )
    wrist_cameras: bool = field(
        default=False,
        metadata={"help": "Render the wrist cameras (needed by a two-image student; wrist_image = left wrist)."},
    )


def seeds_or_all(seeds: list[int], count: int = 100) -> list[int]:
    return list(range(count)) if seeds == [-1] else seeds


def make_tiny_pair(output_dir: str, seed: int, wrist_cameras: bool) -> tuple[str, str]:
    """A tiny OpenVLA-OFT (parallel, 14 x 25) student and a perturbed copy as teacher, for the pipeline check.

    Their BOUNDS statistics span +-pi on the joints and [0, 1] on the grippers.
    """
    low = [-np.pi] * 6 + [0.0] + [-np.pi] * 6 + [0.0]
    high = [np.pi] * 6 + [1.0] + [np.pi] * 6 + [1.0]
    stats = {ROBOTWIN_SUITE: bounds_norm_stats({"action": {"min": low, "max": high}})}
    paths = []
    for name, model_seed in (("student_init", seed), ("teacher", seed + 1)):
        paths.append(
            make_tiny_openvla(
                os.path.join(output_dir, name),
                decoding="parallel",
                chunk_size=ROBOTWIN_CHUNK_SIZE,
                action_dim=ROBOTWIN_ACTION_DIM,
                norm_stats=stats,
                unnorm_key=ROBOTWIN_SUITE,
                num_images=2 if wrist_cameras else 1,
                seed=model_seed,
            )
        )
    return paths[0], paths[1]


def main(script_args: ScriptArguments, training_args: VLAOPDConfig, model_args: ModelConfig) -> dict:
    model_path = model_args.model_name_or_path
    teacher = training_args.teacher_model_name_or_path
    if model_path is None:
        # One process builds the tiny models; the others wait for them and load them.
        with training_args.main_process_first(desc="making the tiny student and teacher"):
            student_dir, teacher_dir = (
                os.path.join(training_args.output_dir, name) for name in ("student_init", "teacher")
            )
            if training_args.process_index == 0:
                make_tiny_pair(training_args.output_dir, training_args.seed, script_args.wrist_cameras)
        model_path, teacher = student_dir, teacher or teacher_dir
    if teacher is None:
        raise ValueError(
            "Pass `--teacher_model_name_or_path`: a VLA checkpoint with the student's action space (14-D, chunk 25, "
            "same tokenizer and normalisation key)."
        )
    model = OpenVLAForActionPrediction.from_pretrained(model_path)
    processor = OpenVLAProcessor.from_pretrained(model_path)
    if script_args.wrist_cameras != (model.config.num_images > 1):
        raise ValueError(
            f"The student takes {model.config.num_images} image(s) per observation: pass `--wrist_cameras` exactly "
            "when it takes two (head camera + left wrist camera)."
        )

    # The pool builds RoboTwin environments instead of LIBERO ones; a process runs `num_envs` of them.
    envs = make_env_pool(
        num_workers=training_args.num_envs,
        image_size=training_args.image_size,
        wrist_camera=script_args.wrist_cameras,
        step_timeout=training_args.rollout_timeout,
        env_factory=functools.partial(
            make_robotwin_env,
            seed=script_args.robotwin_seed,
            task_config=script_args.task_config,
            expert_check=script_args.expert_check,
            robotwin_root=script_args.robotwin_root,
        ),
    )
    train_prompts = make_robotwin_prompts(script_args.tasks, seeds_or_all(script_args.seeds))
    eval_prompts = make_robotwin_prompts(script_args.tasks, seeds_or_all(script_args.eval_seeds))
    trainer = VLAOPDTrainer(
        model=model,
        teacher_model=teacher,
        args=training_args,
        train_dataset=train_prompts,
        eval_dataset=eval_prompts,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        envs=envs,
    )
    try:
        before = trainer.evaluate()["eval_success_rate"]
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        after = trainer.evaluate()["eval_success_rate"]
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card(model_name=os.path.basename(os.path.normpath(training_args.output_dir)))
    finally:
        envs.close()  # the trainer closes only the pools it created itself
    if trainer.accelerator.is_main_process:
        width = 34
        print(f"\n{'':{width}} success rate ({len(eval_prompts)} greedy episodes)")
        print(f"{'student before OPD':{width}} {100 * before:5.1f}%")
        print(f"{'student after OPD':{width}} {100 * after:5.1f}%")
        print(f"Model, model card, videos and learning curve: {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=ROBOTWIN_SUITE)
    return {"before": before, "after": after}


def make_parser(subparsers=None):
    dataclass_types = (ScriptArguments, VLAOPDConfig, ModelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("opd_robotwin", help="VLA-OPD on RoboTwin 2.0", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    parser.set_defaults(
        output_dir="outputs/opd_robotwin",
        max_steps=20,
        prompts_per_step=8,
        num_generations=4,
        num_envs=4,
        image_size=224,
        temperature=1.6,
        learning_rate=5e-6,
        lr_scheduler_type="constant",
        rollout_timeout=1800.0,
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
