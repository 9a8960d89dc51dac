"""Success rate of the privileged scripted LIBERO expert over LIBERO's fixed init states.

    python benchmarks/expert_success.py --suite libero_object
    python benchmarks/expert_success.py --suite libero_spatial --task-ids 0 9 --episodes 10
    python benchmarks/expert_success.py --suite libero_spatial --chunk-size 8   # open-loop chunks, as a chunked
                                                                               # student would execute them
    python benchmarks/expert_success.py --suite libero_goal --task-ids 3      # a task outside `supported_tasks`

Runs LIBERO's standard protocol (reset, init state, 10 wait steps, at most 220/280/300 steps for
spatial/object/goal, 520 for libero_10) without rendering, one episode per init state, with LIBERO's fixture placement
draw seeded per init state as `LiberoEnv` seeds it (repeatable runs), and prints a per-task table; the last line is
`average: <success rate over all episodes>`. Tasks outside `supported_tasks(suite)` run the same controller
(`plan_actions`, which `ScriptedLiberoExpert` refuses to serve for them) and are marked in the table.
"""

import argparse
import time

from trl_vla.envs.libero import placement_seed
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task-ids", type=int, nargs="*", help="default: every supported task of the suite")
    parser.add_argument("--episodes", type=int, default=50, help="init states per task (the first N)")
    parser.add_argument(
        "--chunk-size", type=int, default=1, help="execute the expert's open-loop plan of this many steps per query"
    )
    args = parser.parse_args()

    task_ids = args.task_ids if args.task_ids else list(supported_tasks(args.suite))
    rows, successes, total = [], 0, 0
    for task_id in task_ids:
        env, init_states, instruction = make_state_env(args.suite, task_id)
        start, wins, steps = time.time(), 0, []
        episodes = min(args.episodes, len(init_states))
        for k in range(episodes):
            seed = placement_seed(args.suite, task_id, k)
            ok, n = run_expert_episode(
                env, _chunked(args.chunk_size), init_states[k], MAX_EPISODE_STEPS[args.suite], placement_seed=seed
            )
            wins += ok
            if ok:
                steps.append(n)
        env.close()
        mean_steps = sum(steps) / len(steps) if steps else float("nan")
        supported = "yes" if task_id in supported_tasks(args.suite) else "no"
        rows.append((task_id, supported, wins, episodes, mean_steps, time.time() - start, instruction))
        print(f"task {task_id}: {wins}/{episodes} ({time.time() - start:.0f} s)", flush=True)
        successes, total = successes + wins, total + episodes

    print(f"\n{args.suite}, chunk size {args.chunk_size}")
    print(
        "| task | supported | success | rate | mean steps (successes) | time (s) | instruction |\n"
        "|---|---|---|---|---|---|---|"
    )
    for task_id, supported, wins, episodes, mean_steps, seconds, instruction in rows:
        print(
            f"| {task_id} | {supported} | {wins}/{episodes} | {wins / episodes:.2f} | {mean_steps:.0f} | {seconds:.0f} "
            f"| {instruction} |"
        )
    print(f"average: {successes / total:.4f}")


if __name__ == "__main__":
    main()
