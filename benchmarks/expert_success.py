"""Success rate of the privileged scripted LIBERO expert over LIBERO's fixed init states.

    python benchmarks/expert_success.py --suite libero_object
    python benchmarks/expert_success.py --suite libero_spatial --task-ids 0 9 --episodes 10
    python benchmarks/expert_success.py --suite libero_spatial --chunk-size 8   # open-loop chunks, as a chunked
                                                                               # student would execute them
    python benchmarks/expert_success.py --suite libero_90 --task-ids 0        # a task outside `supported_tasks`
    python benchmarks/expert_success.py --suite libero_10 --workers 2         # two processes per task

Runs LIBERO's standard protocol (reset, init state, 10 wait steps, at most 220/280/300 steps for
spatial/object/goal, 520 for libero_10) without rendering, one episode per init state, with LIBERO's fixture placement
draw seeded per init state as `LiberoEnv` seeds it (the scene `LiberoEnv` shows; an episode's result does not depend
on the episodes run before it, so any `--workers` gives the same table), and prints a per-task table with the init
states that failed; the last line is
`average: <success rate over all episodes>`. Tasks outside `supported_tasks(suite)` run the same controller
(`plan_actions`, which `ScriptedLiberoExpert` refuses to serve for them) and are marked in the table.
"""

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from trl_vla.envs.libero import placement_seed, task_info
from trl_vla.envs.libero_render_free import MAX_EPISODE_STEPS, make_state_env, run_expert_episode
from trl_vla.teachers.scripted_libero import plan_actions, supported_tasks


def _chunked(chunk_size: int):
    """`act(state)` that re-plans every `chunk_size` steps and executes the plan open-loop in between."""
    queue = []

    def act(state):
        if not queue:
            queue.extend(plan_actions(state, chunk_size))
        return queue.pop(0)

    return act


def _episodes(job: tuple[str, int, int, list[int]]) -> list[tuple[int, bool, int]]:
    """`(init state, success, steps)` of the episodes of one task from the given init states, in one env."""
    suite, task_id, chunk_size, init_ids = job
    env, init_states, _ = make_state_env(suite, task_id)
    results = []
    try:
        for k in init_ids:
            ok, steps = run_expert_episode(
                env,
                _chunked(chunk_size),
                init_states[k],
                MAX_EPISODE_STEPS[suite],
                placement_seed=placement_seed(suite, task_id, k),
            )
            results.append((k, ok, steps))
    finally:
        env.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task-ids", type=int, nargs="*", help="default: every supported task of the suite")
    parser.add_argument("--episodes", type=int, default=50, help="init states per task (the first N)")
    parser.add_argument(
        "--chunk-size", type=int, default=1, help="execute the expert's open-loop plan of this many steps per query"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that share each task's init states (an episode's result does not depend on which process "
        "ran it, nor on the episodes run before it)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    task_ids = args.task_ids if args.task_ids else list(supported_tasks(args.suite))
    pool = None
    if args.workers > 1:
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    rows, successes, total = [], 0, 0
    try:
        for task_id in task_ids:
            start = time.time()
            info = task_info(args.suite, task_id)
            instruction = info["instruction"]
            ids = list(range(min(args.episodes, info["num_init_states"])))
            jobs = [(args.suite, task_id, args.chunk_size, ids[w :: args.workers]) for w in range(args.workers)]
            parts = list(pool.map(_episodes, jobs)) if pool is not None else [_episodes(jobs[0])]
            results = sorted(r for part in parts for r in part)
            wins = sum(ok for _, ok, _ in results)
            steps = [n for _, ok, n in results if ok]
            failed = [k for k, ok, _ in results if not ok]
            mean_steps = sum(steps) / len(steps) if steps else float("nan")
            supported = "yes" if task_id in supported_tasks(args.suite) else "no"
            seconds = time.time() - start
            rows.append((task_id, supported, wins, len(ids), mean_steps, seconds, failed, instruction))
            print(f"task {task_id}: {wins}/{len(ids)} ({seconds:.0f} s)", flush=True)
            successes, total = successes + wins, total + len(ids)
    finally:
        if pool is not None:
            pool.shutdown()

    print(f"\n{args.suite}, chunk size {args.chunk_size}")
    print(
        "| task | supported | success | rate | mean steps (successes) | time (s) | failed init states | instruction |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for task_id, supported, wins, episodes, mean_steps, seconds, failed, instruction in rows:
        print(
            f"| {task_id} | {supported} | {wins}/{episodes} | {wins / episodes:.2f} | {mean_steps:.0f} | {seconds:.0f} "
            f"| {' '.join(map(str, failed)) or '-'} | {instruction} |"
        )
    print(f"average: {successes / total:.4f}")


if __name__ == "__main__":
    main()
