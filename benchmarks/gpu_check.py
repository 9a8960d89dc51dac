"""The GPU check: what a lent H100/H200 should measure in a few minutes, in one command.

    python benchmarks/gpu_check.py               # one GPU, about 5-8 minutes; nothing is downloaded

1. **OPD at the paper's model size, sharded.** A 7B-shaped OpenVLA-OFT student (parallel decoding, chunk 8) and a
   7B-shaped teacher, random weights from `OpenVLAConfig()`'s released shapes, bf16, through `accelerate launch` with
   `accelerate_configs/deepspeed_zero3.yaml` and with `accelerate_configs/fsdp2.yaml` (one process each): a few
   `VLAOPDTrainer` optimizer steps on synthetic rollouts (a stand-in simulator that returns random 224x224 camera
   images, so that only the models are measured). Prints the step time, the teacher's scoring time per round and the
   peak GPU memory of the process.
2. **Policy throughput of the 7B shape**: `sample_actions` at batch 1/8/32 in bf16, autoregressive (OpenVLA, 7 tokens)
   and parallel (OFT, 56 tokens).
3. **LIBERO rollout throughput** with one simulator worker per CPU core (`benchmarks/rollout_throughput.py`).

Without a CUDA device it says so and exits with status 2. `--shape tiny --allow_cpu` runs every step with tiny models
on CPU (the accelerate configs replaced by `accelerate_configs/cpu.yaml`): the self-test of this script.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDING_CONFIGS = ("deepspeed_zero3.yaml", "fsdp2.yaml")


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def make_checkpoint(path: str, shape: str, decoding: str, chunk_size: int, seed: int) -> str:
    """Write a randomly initialised OpenVLA of `shape` ("7b": the released shapes; "tiny") and its processor."""
    from trl_vla.testing import make_tiny_openvla

    if shape == "tiny":
        return make_tiny_openvla(path, decoding=decoding, chunk_size=chunk_size, seed=seed)
    from trl_vla import identity_norm_stats
    from trl_vla.models import OpenVLAConfig, OpenVLAForActionPrediction, OpenVLAImageProcessor, OpenVLAProcessor
    from trl_vla.testing import make_tiny_tokenizer
    from trl_vla.testing.tiny_models import WORD_BOUNDARY

    # Llama-2's layout: 32000 ids, the 256 action tokens at their tail, the pad token after them.
    tokenizer = make_tiny_tokenizer(base_vocab_size=32000)
    norm_stats = {"libero": identity_norm_stats(7)}
    config = OpenVLAConfig(
        decoding=decoding, chunk_size=chunk_size, norm_stats=norm_stats, unnorm_key="libero",
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(), torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.manual_seed(seed)
        model = OpenVLAForActionPrediction(config).to(torch.bfloat16)
    model.save_pretrained(path)
    OpenVLAProcessor(
        image_processor=OpenVLAImageProcessor(image_size=224),
        tokenizer=tokenizer,
        prompt_end_token_id=tokenizer.convert_tokens_to_ids(WORD_BOUNDARY),
        norm_stats=norm_stats,
        unnorm_key="libero",
    ).save_pretrained(path)
    return path


class SyntheticEnv:
    """A stand-in simulator with the `LiberoEnv` interface: random camera images, no success, `episode_steps` long."""

    def __init__(self, suite: str, task_id: int, image_size: int = 224, episode_steps: int = 32, **_: object):
        self.image_size, self.episode_steps = image_size, episode_steps
        self.rng = np.random.default_rng(0)
        self.elapsed = 0

    def _obs(self):
        return {"image": self.rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)}

    def reset(self, *, seed=None, options=None):
        self.elapsed = 0
        return self._obs(), {"success": False, "env_steps": 0}

    def step(self, actions):
        steps = len(np.atleast_2d(actions))
        self.elapsed += steps
        return self._obs(), 0.0, False, self.elapsed >= self.episode_steps, {"success": False, "env_steps": steps}

    def close(self):
        pass


def opd_worker(args) -> None:
    """Runs under `accelerate launch`: a few OPD steps of a sharded student against a teacher, on synthetic rollouts."""
    import datasets
    from transformers import TrainerCallback

    from trl_vla import VLAOPDConfig, VLAOPDTrainer
    from trl_vla.envs.base import PROMPT_COLUMNS
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.rollout import EnvPool

    student_path, teacher_path = args.checkpoints
    prompts = datasets.Dataset.from_list(
        [dict(zip(PROMPT_COLUMNS, ("libero_object", 0, i, "pick up the bowl"), strict=True)) for i in range(4)]
    )
    step_times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_times.append(time.perf_counter() - self.start)

    image_size = 224 if args.shape == "7b" else 64
    envs = EnvPool(num_workers=0, env_factory=SyntheticEnv, image_size=image_size, episode_steps=32)
    dtype = torch.bfloat16 if args.shape == "7b" else torch.float32
    trainer = VLAOPDTrainer(
        model=OpenVLAForActionPrediction.from_pretrained(student_path, dtype=dtype),
        teacher_model=OpenVLAForActionPrediction.from_pretrained(teacher_path, dtype=dtype),
        args=VLAOPDConfig(
            output_dir=tempfile.mkdtemp(prefix="gpu_check_"),
            max_steps=args.steps,
            prompts_per_step=2,
            num_generations=1,
            learning_rate=1e-6,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            num_videos=0,
            bf16=args.shape == "7b",
            use_cpu=not torch.cuda.is_available(),
            max_episode_steps=32,
            gradient_checkpointing=args.shape == "7b",
            seed=0,
        ),  # fmt: skip
        train_dataset=prompts,
        processing_class=OpenVLAProcessor.from_pretrained(student_path),
        envs=envs,
        callbacks=[StepTimer()],
    )
    trainer.train()
    teacher_times = [h["time/teacher"] for h in trainer.state.log_history if "time/teacher" in h]
    if trainer.accelerator.is_main_process:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        print(
            "RESULT "
            + json.dumps(
                {
                    "steps": len(step_times),
                    "step_s": float(np.median(step_times[1:] or step_times)),
                    "teacher_s": float(np.median(teacher_times)) if teacher_times else float("nan"),
                    "peak_gib": peak,
                    "processes": trainer.accelerator.num_processes,
                }
            ),
            flush=True,
        )
    trainer.close()


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------


def policy_throughput(path: str, shape: str, decoding: str, batch_sizes, repeats: int = 3) -> list[tuple[int, float]]:
    """Seconds per `sample_actions` call at each batch size, for the checkpoint at `path` loaded with `decoding`
    (autoregressive: chunk 1; parallel: chunk 8)."""
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if shape == "7b" else torch.float32
    chunk = 8 if decoding == "parallel" else 1
    model = OpenVLAForActionPrediction.from_pretrained(path, dtype=dtype, decoding=decoding, chunk_size=chunk)
    model = model.to(device).eval()
    policy = VLAPolicy(model, OpenVLAProcessor.from_pretrained(path))
    size = 224 if shape == "7b" else 64
    rows = []
    for batch in batch_sizes:
        observations = [{"image": np.zeros((size, size, 3), np.uint8)} for _ in range(batch)]
        inputs = policy.build_inputs(observations, ["pick up the bowl"] * batch)
        policy.sample_actions(inputs, temperature=1.0)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            policy.sample_actions(inputs, temperature=1.0)
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append((batch, (time.perf_counter() - start) / repeats))
    del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--steps", type=int, default=3, help="OPD optimizer steps per sharding config.")
    parser.add_argument("--allow_cpu", action="store_true", help="Run on CPU (with --shape tiny: a self-test).")
    parser.add_argument("--skip_rollouts", action="store_true", help="Skip the LIBERO rollout throughput.")
    parser.add_argument("--opd_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.opd_worker:
        opd_worker(args)
        return
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "gpu_check needs a CUDA GPU (an H100/H200 runs it in about 5-8 minutes) and none is visible: "
            "torch.cuda.is_available() is False. On a CPU, `--shape tiny --allow_cpu` runs the same steps with tiny "
            "models as a self-test.",
            file=sys.stderr,
        )
        sys.exit(2)
    start = time.perf_counter()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_check: {args.shape} OpenVLA shapes on {device}", flush=True)
    work = tempfile.mkdtemp(prefix="gpu_check_")
    student = make_checkpoint(os.path.join(work, "student"), args.shape, "parallel", 8, seed=0)
    teacher = make_checkpoint(os.path.join(work, "teacher"), args.shape, "parallel", 8, seed=1)

    sharded = []
    configs = SHARDING_CONFIGS if torch.cuda.is_available() else ("cpu.yaml",)
    for name in configs:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            os.path.join(REPO, "accelerate_configs", name),
            *(["--num_processes", "1"] if torch.cuda.is_available() else []),
            os.path.abspath(__file__), "--opd_worker", "--shape", args.shape, "--steps", str(args.steps),
            "--checkpoints", student, teacher,
        ]  # fmt: skip
        tic = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            print(f"OPD under {name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}", flush=True)
            sharded.append((name, None, time.perf_counter() - tic))
            continue
        sharded.append((name, json.loads(lines[-1][len("RESULT ") :]), time.perf_counter() - tic))

    print(
        "\n| OPD, 2 prompts per round | processes | optimizer steps | step s (median) | teacher s / round | peak GiB | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r, wall in sharded:
        if r is None:
            print(f"| {name} | failed | | | | | {wall:.0f} |")
        else:
            print(
                f"| {name} | {r['processes']} | {r['steps']} | {r['step_s']:.2f} | {r['teacher_s']:.2f} | "
                f"{r['peak_gib']:.1f} | {wall:.0f} |"
            )

    print(
        "\n| policy (bf16)" if torch.cuda.is_available() else "\n| policy",
        "| decoding | batch | s / decision batch | decisions / s |",
    )
    print("|---|---|---|---|---|")
    for decoding, chunk in (("autoregressive", 1), ("parallel", 8)):
        for batch, seconds in policy_throughput(student, args.shape, decoding, (1, 8, 32)):
            print(f"| {args.shape} | {decoding} (chunk {chunk}) | {batch} | {seconds:.3f} | {batch / seconds:.1f} |")

    if not args.skip_rollouts:
        workers = str(os.cpu_count() or 1)
        command = [sys.executable, os.path.join(REPO, "benchmarks", "rollout_throughput.py"), "--workers", workers]
        result = subprocess.run(command, capture_output=True, text=True)
        print(f"\nLIBERO rollout throughput, {workers} workers (benchmarks/rollout_throughput.py):")
        print("\n".join(result.stdout.strip().splitlines()[-5:]) if result.returncode == 0 else result.stderr[-2000:])
    print(f"\ngpu_check done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
