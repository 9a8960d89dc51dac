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
        are then those of the untempered distribution. `generator` is a `torch.Generator` or a sequence of one per
        row, each row then sampled from its own generator only (`sample_from_logits` does both): the rollout engine
        gives every episode its own random stream, so that a decision's sample does not depend on which other
        environments share its batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .action_tokenizer import ActionSpace


__all__ = ["ActionPolicy", "Generators", "sample_from_logits"]


@runtime_checkable
class ActionPolicy(Protocol):
    """Structural type of every policy in `trl_vla`; see the module docstring for the full contract."""

    @property
    def action_space(self) -> ActionSpace: ...

    def build_inputs(self, observations: Sequence[Mapping[str, Any]], instructions: Sequence[str]) -> Any: ...

    def action_logits(self, inputs: Any, action_token_ids: torch.Tensor) -> torch.Tensor: ...

    def sample_actions(
        self, inputs: Any, temperature: float = 1.0, generator: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]: ...


Generators = torch.Generator | Sequence[torch.Generator] | None
"""What `sample_actions` draws from: one generator for the batch, one per row, or torch's default one."""


def sample_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, generator: Generators = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample columns from action-restricted logits `[B, ..., n_bins]`.

    `generator` is a `torch.Generator` for the whole batch, or a sequence of `B`, row `b` being sampled from
    `generator[b]` alone (so its samples are the same whatever else is in the batch).

    Returns `(columns, log_probs)` of shape `[B, ...]`: the sampled column indices and their log-probabilities under
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
        probs = log_probs.exp()
        if generator is None or isinstance(generator, torch.Generator):
            flat = probs.reshape(-1, probs.shape[-1])
            columns = torch.multinomial(flat, 1, generator=generator).reshape(log_probs.shape[:-1])
        else:
            if len(generator) != len(logits):
                raise ValueError(f"Got {len(generator)} generators for a batch of {len(logits)} rows.")
            columns = torch.stack(
                [
                    torch.multinomial(row.reshape(-1, row.shape[-1]), 1, generator=row_generator).reshape(
                        row.shape[:-1]
                    )
                    for row, row_generator in zip(probs, generator)
                ]
            )
    return columns, log_probs.gather(-1, columns.unsqueeze(-1)).squeeze(-1)
