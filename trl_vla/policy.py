"""The policy contract: the one seam between what acts (student VLA, teacher VLA, scripted expert) and what trains or
evaluates (rollouts, trainers, evaluation). Trainers and the rollout engine call only these four members.

Observations
    A batch of observations is a sequence of per-environment dicts, as `LiberoEnv` produces them:
    `"image"` (`[H, W, 3]` uint8, oriented as in the OpenVLA LIBERO evaluation), optionally `"wrist_image"` and
    `"proprio"` (`[P]` float32), and `"privileged_state"` (a flat dict of numpy arrays, the simulator state a
    privileged expert reads). Observations stored by a rollout whose environments record step states also hold
    `"chunk_privileged_states"`: the states the chunk decided on them went through (see `trl_vla.rollout`), from which
    a privileged teacher scores every action of the chunk at the state it was executed in. A policy uses the keys it
    needs and ignores the others.

Action tokens
    One decision emits `A = action_space.action_dim * action_space.chunk_size` tokens in chunk-major order. Logits are
    restricted to the action bins: `[B, A, n_bins]`, column `j` being token id `action_space.first_token_id + j`
    (see `trl_vla.ActionTokenizer`).

Members
    `action_space -> ActionSpace`
        Compared between student and teacher before any distillation starts.
    `build_inputs(observations, instructions) -> inputs`
        Turns a batch of observations and their language instructions into whatever the policy's other two methods
        take (for a VLA: the processor's output, on the model's device).
    `action_logits(inputs, action_token_ids) -> [B, A, n_bins]`
        Teacher-forced logits of every action token given the observation (and, for autoregressive decoding, the
        previous action tokens `action_token_ids`, `[B, A]`). Differentiable for a trainable student.
    `sample_actions(inputs, temperature=1.0, generator=None) -> (token_ids [B, A], log_probs [B, A], actions)`
        Samples a decision: token ids, the log-probability of each sampled token under the temperature-scaled
        distribution (the same temperature the loss uses), and the continuous, un-normalised robot actions
        `[B, chunk_size, action_dim]` (numpy float32) to execute. `temperature=0` is greedy (argmax); its log-probs
        are then those of the untempered distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .action_tokenizer import ActionSpace


__all__ = ["ActionPolicy", "sample_from_logits"]


@runtime_checkable
class ActionPolicy(Protocol):
    """Structural type of every policy in `trl_vla`; see the module docstring for the full contract."""

    @property
    def action_space(self) -> ActionSpace: ...

    def build_inputs(self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str]) -> Any: ...

    def action_logits(self, inputs: Any, action_token_ids: torch.Tensor) -> torch.Tensor: ...

    def sample_actions(
        self, inputs: Any, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]: ...


def sample_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample columns from action-restricted logits `[..., n_bins]`.

    Returns `(columns, log_probs)` of shape `[...]`: the sampled column indices and their log-probabilities under
    `softmax(logits / temperature)` (under `softmax(logits)` when `temperature == 0`, which takes the argmax).
    """
    if temperature < 0:
        raise ValueError(f"`temperature` must be non-negative, got {temperature}.")
    logits = logits.float()
    if temperature == 0:
        log_probs = torch.log_softmax(logits, dim=-1)
        columns = logits.argmax(dim=-1)
    else:
        log_probs = torch.log_softmax(logits / temperature, dim=-1)
        flat = log_probs.reshape(-1, log_probs.shape[-1]).exp()
        columns = torch.multinomial(flat, 1, generator=generator).reshape(log_probs.shape[:-1])
    return columns, log_probs.gather(-1, columns.unsqueeze(-1)).squeeze(-1)
