# /// script
# dependencies = ["trl-vla[libero]"]
# ///
"""
Evaluate any VLA checkpoint on LIBERO under the standard protocol: episode k of a task starts from init state k,
10 no-op wait steps, the suite's episode limit, greedy actions. Prints success per task and overall, saves videos of
failures, and logs the results as JSON with `evaluate.save`.

The standard 50 episodes per task of a suite (OpenVLA / SimpleVLA-RL / VLA-OPD report this):

```bash
python examples/eval_libero.py --model_name_or_path outputs/opd --suite libero_object --episodes_per_task 50 \
    --output_dir outputs/eval
```

Held-out init states (ones a training run neither trained nor evaluated on), with the 95% interval printed beside
each rate:

```bash
python examples/eval_libero.py --model_name_or_path outputs/opd_libero --task_ids 0 --init_state_ids $(seq 32 47)
```

A published checkpoint under its own paper's evaluation (`--protocol openvla|oft|simplevla_rl`: 256 px camera, JPEG
round trip, Lanczos resize to 224, centre crop, gripper [0, 1] -> {-1, +1} flipped, the suite's `unnorm_key`):

```bash
python examples/eval_libero.py --model_name_or_path openvla/openvla-7b-finetuned-libero-spatial \
    --suite libero_spatial --protocol openvla
```

A quick look at two tasks:

```bash
python examples/eval_libero.py --model_name_or_path outputs/opd --suite libero_object --task_ids 0 1 \
    --episodes_per_task 4 --num_envs 2
```

Forgetting on held-out tasks, before (the initial student) and after post-training (the paper holds out 2
libero_object and 2 libero_spatial tasks):

```bash
python examples/eval_libero.py --model_name_or_path outputs/opd --baseline_model_name_or_path outputs/opd/student_init \
    --forgetting --episodes_per_task 10
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import evaluate
import torch
from _common import CheckpointArguments
from trl import TrlParser

from trl_vla.evaluation import HELD_OUT_TASKS, evaluate_policy, evaluate_tasks, forgetting_report, format_success
from trl_vla.models import as_policy


@dataclass
class EvalArguments:
    """What to evaluate, and how."""

    model_name_or_path: str = field(metadata={"help": "The VLA checkpoint (a directory or a Hub id) to evaluate."})
    suite: str = field(default="libero_object", metadata={"help": "LIBERO suite."})
    task_ids: list[int] | None = field(default=None, metadata={"help": "Tasks of the suite (default: all)."})
    episodes_per_task: int = field(default=50, metadata={"help": "Episodes per task (init states 0..n-1)."})
    init_state_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Init states to evaluate, one episode each per task, instead of 0..episodes_per_task-1."},
    )
    open_loop_steps: int | None = field(
        default=None, metadata={"help": "Actions of each predicted chunk executed per decision (default: all)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the simulator and of sampling."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: greedy, the standard)."})
    num_envs: int = field(default=2, metadata={"help": "Simulator worker processes."})
    protocol: str = field(
        default="native",
        metadata={
            "help": "Published LIBERO evaluation to reproduce: native (this repository's), openvla, oft or "
            "simplevla_rl (camera size, JPEG + Lanczos resize to 224, centre crop, gripper post-processing, "
            "unnorm_key of the suite, open-loop steps, episode limit; see trl_vla.envs.eval_protocols)."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Camera resolution rendered by the simulator (default: the protocol's)."}
    )
    max_episode_steps: int | None = field(default=None, metadata={"help": "Override of the suite's episode limit."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json and videos go."})
    forgetting: bool = field(
        default=False,
        metadata={"help": "Evaluate the held-out tasks (2 libero_object + 2 libero_spatial) instead of --suite."},
    )
    baseline_model_name_or_path: str | None = field(
        default=None, metadata={"help": "With --forgetting: the checkpoint before post-training, to compare with."}
    )


def main(args: EvalArguments, checkpoint: CheckpointArguments | None = None) -> dict:
    torch.set_num_threads(1)
    os.makedirs(args.output_dir, exist_ok=True)
    kwargs = {
        "episodes_per_task": args.episodes_per_task,
        "seed": args.seed,
        "temperature": args.temperature,
        "num_envs": args.num_envs,
        "image_size": args.image_size,
        "max_episode_steps": args.max_episode_steps,
        "init_state_ids": args.init_state_ids,
        "open_loop_steps": args.open_loop_steps,
        "protocol": args.protocol,
    }
    load_kwargs = checkpoint.checkpoint_kwargs() if checkpoint is not None else {}
    policy = as_policy(args.model_name_or_path, **load_kwargs)
    if args.forgetting:
        results = evaluate_tasks(policy, HELD_OUT_TASKS, video_dir=os.path.join(args.output_dir, "videos"), **kwargs)
        for suite_results in results.values():
            print_results(suite_results)
        if args.baseline_model_name_or_path is not None:
            baseline_policy = as_policy(args.baseline_model_name_or_path, **load_kwargs)
            baseline = evaluate_tasks(baseline_policy, HELD_OUT_TASKS, **kwargs)
            report = forgetting_report(baseline, results)
            print(f"\n{'held-out task':40} {'before':>8} {'after':>8} {'change':>8}")
            for row in report["tasks"]:
                name = f"{row['suite']} task {row['task_id']}"
                print(f"{name:40} {100 * row['before']:7.1f}% {100 * row['after']:7.1f}% {100 * row['change']:+7.1f}")
            print(
                f"{'mean':40} {100 * report['before']:7.1f}% {100 * report['after']:7.1f}% {100 * report['change']:+7.1f}"
            )
            results = {"held_out": results, "baseline": baseline, "forgetting": report}
    else:
        results = evaluate_policy(
            policy, args.suite, args.task_ids, video_dir=os.path.join(args.output_dir, "videos"), **kwargs
        )
        print_results(results)
    path = os.path.join(args.output_dir, "results.json")
    evaluate.save(path, model=args.model_name_or_path, **results)
    print(f"Results: {path}")
    return results


def print_results(results: dict) -> None:
    episodes = len(results["init_state_ids"])
    print(
        f"\n{results['suite']} ({results['protocol']} protocol): {episodes} greedy episodes per task "
        "(success, 95% Wilson interval)"
    )
    for task in results["per_task"]:
        print(
            f"  task {task['task_id']:2d}  {format_success(sum(task['successes']), episodes)}  {task['instruction']}"
        )
    print(f"  overall  {format_success(results['num_successes'], results['num_episodes'])}")


if __name__ == "__main__":
    eval_args, checkpoint_args = TrlParser((EvalArguments, CheckpointArguments)).parse_args_and_config()
    main(eval_args, checkpoint_args)
