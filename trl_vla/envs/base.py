"""What every simulator environment of `trl_vla` shares, whatever the simulator (LIBERO, RoboTwin 2.0).

- `PROMPT_COLUMNS`: the columns of a prompts dataset, one row per episode to run (`make_prompts` builds them for
  LIBERO); the rollout engine and the trainers read nothing else from a prompt.
- `SimulationError`: raised by an environment whose simulation became invalid; the rollout engine counts it as a
  simulator fault (the episode is dropped and the environment rebuilt), not as a policy failure.
"""

from __future__ import annotations


__all__ = ["PROMPT_COLUMNS", "SimulationError"]

PROMPT_COLUMNS = ("suite", "task_id", "init_state_id", "instruction")
"""Columns of a prompts dataset: the suite, the task, the init state and the task's instruction."""


class SimulationError(RuntimeError):
    """The simulation became invalid (NaN state, MuJoCo instability); the episode cannot be trusted."""
