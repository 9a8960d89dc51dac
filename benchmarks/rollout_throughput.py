"""Rollout throughput on LIBERO: the usual evaluation loop against `trl_vla.rollout`, and the physics limit.

(a) naive: one process, LIBERO's `OffScreenRenderEnv` as evaluation scripts use it: a hard reset (model rebuild) per
    episode, the cameras rendered at every step, one policy call per chunk.
(b) engine: `collect_rollouts` on a `EnvPool` with 1 and 2 persistent workers (soft resets, one render per
    chunk, one forward pass per physics substep), lockstep (one batched policy call for every environment) and
    pipelined (the policy decides for one half of the environments while the other half steps), after a warm-up
    round that builds the workers' environments (one task each).
(c) physics only, the limit: as many processes as the most workers, each stepping a task's robosuite `step`
    (physics, controller, observables) with no render, no privileged state, no policy and no process to talk to;
    once with LIBERO's own substeps (`% limit`) and once with the engine's (`% strict`).

(a) and (b) run the same episodes (prompts, episode cap) with the same policy: a tiny OpenVLA (parallel decoding,
chunk 8) and the same camera (agent view, 128x128). Throughput is environment steps (wait steps excluded) per
wall-clock second. Then the per-phase table of each engine run (`RolloutBatch.phase_times`, measured inside the
workers: % of workers x wall time) and the main process's policy and waiting seconds. The last lines are
`ratio: <best engine / naive>` and the best engine's share of the physics limit.

    python benchmarks/rollout_throughput.py                      # about 3.5 minutes on 2 CPU cores
    python benchmarks/rollout_throughput.py --episodes 8 --max_steps 280 --workers 1 2 4
"""

import argparse
import multiprocessing
import os
import tempfile
import time

import numpy as np
import torch

from trl_vla.envs.libero import (
    NUM_WAIT_STEPS,
    WAIT_ACTION,
    LiberoEnv,
    init_states,
    libero_observation,
    make_prompts,
    placement_seed,
    task_info,
)
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
from trl_vla.rollout import EnvPool, collect_rollouts
from trl_vla.testing import make_tiny_openvla


def naive_rollouts(policy, prompts, image_size: int, max_steps: int, seed: int) -> dict[str, float]:
    """The usual loop: LIBERO's env with its default hard reset, rendering every step, one process."""
    from libero.libero.envs import OffScreenRenderEnv

    generator = torch.Generator().manual_seed(seed)
    envs = {}
    for row in prompts:  # building each task's env once is not counted: the engine's warm-up builds them too
        key = (row["suite"], row["task_id"])
        if key not in envs:
            bddl = task_info(*key)["bddl_file"]
            envs[key] = OffScreenRenderEnv(
                bddl_file_name=bddl, camera_names=["agentview"], camera_heights=image_size, camera_widths=image_size
            )
    env_steps = 0
    policy_time = 0.0
    start = time.perf_counter()
    for row in prompts:
        env = envs[(row["suite"], row["task_id"])]
        np.random.seed(placement_seed(row["suite"], row["task_id"], row["init_state_id"]))
        env.reset()  # LIBERO's default: rebuilds the MuJoCo model
        env.set_init_state(init_states(row["suite"], row["task_id"])[row["init_state_id"]])
        for _ in range(NUM_WAIT_STEPS):
            raw, _, _, _ = env.step(WAIT_ACTION)
        steps, done = 0, False
        while steps < max_steps and not done:
            obs = libero_observation(raw)
            tic = time.perf_counter()
            inputs = policy.build_inputs([obs], [row["instruction"]])
            _, _, actions = policy.sample_actions(inputs, temperature=1.0, generator=generator)
            policy_time += time.perf_counter() - tic
            for action in actions[0][: max_steps - steps]:
                raw, _, done, _ = env.step(action)
                steps += 1
                if done:
                    break
        env_steps += steps
    wall = time.perf_counter() - start
    for env in envs.values():
        env.close()
    return {"env_steps": env_steps, "wall": wall, "policy": policy_time, "env": wall - policy_time}


def _physics_worker(suite, task_id, image_size, steps, seed, stock, barrier, results):
    """One process of a physics-only reference: robosuite's `step` (physics, controller, observables) with the
    cameras never rendered, no privileged state, no policy, no other process to talk to. `stock`: robosuite's own
    substeps (three forward passes each, as LIBERO ships them); otherwise the engine's (`LiberoEnv`'s one forward
    pass per substep)."""
    env = LiberoEnv(suite, task_id, image_size=image_size)
    env.reset(options={"init_state_id": 0})
    actions = np.random.default_rng(seed).uniform(-0.5, 0.5, (steps, 7))
    sim_env = env.sim_env
    if stock:  # drop LiberoEnv's instance attributes over robosuite's methods: its timers and fused substeps
        del sim_env.sim.step, sim_env.sim.forward, sim_env.env._pre_action
        del sim_env.env._update_observables, sim_env.env._get_observations
    barrier.wait()
    start = time.perf_counter()
    for action in actions:
        sim_env.step(action)  # the camera sensors are gated off outside LiberoEnv's decision steps
    results.put((steps, time.perf_counter() - start))
    env.close()


def physics_reference(args, num_processes: int, steps_per_process: int, stock: bool) -> dict[str, float]:
    """The physics limit: `num_processes` processes stepping the benchmark's tasks at once, nothing else."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(num_processes), ctx.Queue()
    processes = [
        ctx.Process(
            target=_physics_worker,
            args=(
                args.suite,
                args.task_ids[i % len(args.task_ids)],
                args.image_size,
                steps_per_process,
                i,
                stock,
                barrier,
                results,
            ),
        )
        for i in range(num_processes)
    ]
    for process in processes:
        process.start()
    measured = [results.get() for _ in processes]
    for process in processes:
        process.join()
    env_steps = sum(steps for steps, _ in measured)
    return {"env_steps": env_steps, "wall": max(seconds for _, seconds in measured), "policy": 0.0}


def engine_rollouts(policy, prompts, num_workers: int, pipeline: bool, args) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    with EnvPool(num_workers=num_workers, image_size=args.image_size, cheap_rendering=args.cheap) as envs:
        # Warm-up: start the workers and build their environments, the tasks spread over them as the scheduler
        # keeps them (a trainer pays this once per run; the naive loop's builds are not timed either).
        first_of_task = {}
        for row in prompts:
            first_of_task.setdefault((row["suite"], row["task_id"]), row)
        tasks = list(first_of_task.values())
        warmup = [tasks[i % len(tasks)] for i in range(envs.num_envs)]
        collect_rollouts(policy, envs, warmup, max_episode_steps=args.chunk_size, seed=args.seed, progress=False)
        startup = time.perf_counter() - start
        batch = collect_rollouts(
            policy, envs, prompts, max_episode_steps=args.max_steps, seed=args.seed, progress=False, pipeline=pipeline
        )
    stats = batch.stats()
    if stats["faults"]:
        print(f"warning: {stats['faults']} simulator faults: {[m for m in batch.fault_messages if m]}")
    result = {"env_steps": stats["env_steps"], "wall": stats["wall_time"], "policy": stats["policy_time"]}
    result["waiting"] = stats["env_time"]
    result["phases"] = batch.phase_times
    result["worker_time"] = envs.num_envs * stats["wall_time"]
    return result, startup


PHASES = (
    "physics",
    "controller",
    "observables",
    "render",
    "privileged_state",
    "reset",
    "build",
    "other",
    "ipc",
    "idle",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task_ids", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--episodes", type=int, default=8, help="Episodes in all (init states 0.. of each task).")
    parser.add_argument("--max_steps", type=int, default=96, help="Environment steps per episode.")
    parser.add_argument("--chunk_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cheap", action="store_true", help="Engine with shadows/reflections off (not in ratio).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    per_task = -(-args.episodes // len(args.task_ids))
    prompts = make_prompts(args.suite, args.task_ids, list(range(per_task))).select(range(args.episodes))
    path = make_tiny_openvla(
        tempfile.mkdtemp(prefix="tiny_openvla_"), decoding="parallel", chunk_size=args.chunk_size, seed=args.seed
    )
    model = OpenVLAForActionPrediction.from_pretrained(path).eval()
    policy = VLAPolicy(model, OpenVLAProcessor.from_pretrained(path))
    print(
        f"{args.suite} tasks {args.task_ids}, {args.episodes} episodes x {args.max_steps} env steps, chunk "
        f"{args.chunk_size}, {args.image_size}x{args.image_size} agent view, tiny OpenVLA (parallel decoding), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )

    rows = [
        (
            "naive (hard reset, render every step)",
            naive_rollouts(policy, prompts, args.image_size, args.max_steps, args.seed),
        )
    ]
    for workers in args.workers:
        for pipeline in (False, True) if workers > 1 else (False,):
            result, startup = engine_rollouts(policy, prompts, workers, pipeline, args)
            label = f"engine, {workers} worker{'s' if workers > 1 else ''}" + (", pipelined" if pipeline else "")
            rows.append((label + (", cheap rendering" if args.cheap else ""), result))
    reference_processes = max(args.workers)
    # At least 600 steps per process (a few seconds), so that the limit is not measured on a blink.
    steps_per_process = max(args.episodes * args.max_steps // reference_processes, 600)
    stock = physics_reference(args, reference_processes, steps_per_process, stock=True)
    rows.append((f"physics only, {reference_processes} procs, LIBERO's steps", stock))
    fused = physics_reference(args, reference_processes, steps_per_process, stock=False)
    rows.append((f"physics only, {reference_processes} procs, engine's steps", fused))

    naive = rows[0][1]["env_steps"] / rows[0][1]["wall"]
    limit = stock["env_steps"] / stock["wall"]
    strict = fused["env_steps"] / fused["wall"]
    print(
        f"\n{'method':46} {'env steps':>9} {'wall s':>8} {'policy s':>9} {'steps/s':>8} {'x naive':>8} {'% limit':>8} "
        f"{'% strict':>8}"
    )
    for label, r in rows:
        rate = r["env_steps"] / r["wall"]
        print(
            f"{label:46} {r['env_steps']:9d} {r['wall']:8.1f} {r['policy']:9.1f} {rate:8.1f} {rate / naive:8.2f} "
            f"{100 * rate / limit:8.1f} {100 * rate / strict:8.1f}"
        )

    print("\nwhere the environments' time went (% of workers x wall; `RolloutBatch.phase_times`):")
    engines = [(label, r) for label, r in rows if "phases" in r]
    print(f"{'phase':18}" + "".join(f"{label.removeprefix('engine, '):>22}" for label, _ in engines))
    for phase in PHASES:
        print(
            f"{phase:18}"
            + "".join(f"{100 * r['phases'].get(phase, 0.0) / r['worker_time']:21.1f}%" for _, r in engines)
        )
    print(f"{'(main: policy s)':18}" + "".join(f"{r['policy']:22.1f}" for _, r in engines))
    print(f"{'(main: waiting s)':18}" + "".join(f"{r['waiting']:22.1f}" for _, r in engines))

    best = max(r["env_steps"] / r["wall"] for _, r in engines)
    print(f"\nratio: {best / naive:.2f}")
    print(
        f"of the physics limit: {100 * best / limit:.1f}% (of LIBERO's own stepping, physics only); strict: "
        f"{100 * best / strict:.1f}% (of the engine's stepping, physics only)"
    )


if __name__ == "__main__":
    main()
