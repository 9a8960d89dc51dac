"""Discrete action tokens, the action space two policies are compared on, and action normalisation statistics.

The conventions are OpenVLA's (https://github.com/openvla/openvla):

* a normalised action value in ``[-1, 1]`` is cut by ``n_bins`` uniform edges (``np.linspace(-1, 1, n_bins)``);
  ``np.digitize`` gives an index in ``[1, n_bins]`` and the value decodes to one of the ``n_bins - 1`` bin centres;
* in the "vocabulary tail" layout the token id is ``vocab_size - index``: for Llama-2's 32000-token vocabulary the
  action ids are 31744..31999 and a *higher* id means a *more negative* value;
* statistics are ``BOUNDS_Q99``: ``x_n = clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` on the dimensions whose
  ``mask`` is true (the gripper is left as it is), stored as ``config.norm_stats[unnorm_key]["action"]``.

Everything that scores actions works on the *columns* of an action-restricted logit tensor ``[..., n_bins]``: column
``j`` is token id ``first_token_id + j``. For OpenVLA that is ``logits[..., 31744:32000]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


__all__ = [
    "ActionSpace",
    "ActionTokenizer",
    "action_bounds",
    "check_norm_stats_compatible",
    "compute_norm_stats",
    "identity_norm_stats",
    "normalize_actions",
    "select_norm_stats",
    "unnormalize_actions",
]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ActionTokenizer:
    """Maps normalised continuous actions to discrete action token ids and back.

    Args:
        vocab_size (`int`, *optional*):
            Size of the base vocabulary whose last `n_bins` ids are re-used as action tokens (OpenVLA's convention:
            token id = `vocab_size - digitize_index`, so ids descend as values ascend). Exactly one of `vocab_size`
            and `first_token_id` must be given.
        n_bins (`int`, *optional*, defaults to `256`):
            Number of bin *edges*; values decode to the `n_bins - 1` bin centres and there are `n_bins` token ids.
        min_action (`float`, *optional*, defaults to `-1.0`):
            Lower clipping bound of normalised actions.
        max_action (`float`, *optional*, defaults to `1.0`):
            Upper clipping bound of normalised actions.
        first_token_id (`int`, *optional*):
            Contiguous layout for newly added tokens: id = `first_token_id + digitize_index - 1`, ascending with value.

    Example:

    ```python
    >>> tok = ActionTokenizer(vocab_size=32000)  # OpenVLA's exact layout
    >>> tok.encode(np.array([-1.0, 0.0, 1.0]))
    array([31999, 31872, 31744])
    ```
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        n_bins: int = 256,
        min_action: float = -1.0,
        max_action: float = 1.0,
        first_token_id: int | None = None,
    ):
        if (vocab_size is None) == (first_token_id is None):
            raise ValueError(
                "Give exactly one of `vocab_size` (OpenVLA's vocabulary-tail layout) or `first_token_id`."
            )
        if n_bins < 2:
            raise ValueError(f"`n_bins` must be at least 2, got {n_bins}.")
        if not min_action < max_action:
            raise ValueError(f"`min_action` ({min_action}) must be smaller than `max_action` ({max_action}).")
        if vocab_size is not None and vocab_size < n_bins:
            raise ValueError(f"`vocab_size` ({vocab_size}) must be at least `n_bins` ({n_bins}).")
        if first_token_id is not None and first_token_id < 0:
            raise ValueError(f"`first_token_id` must be non-negative, got {first_token_id}.")
        self.vocab_size = vocab_size
        self.n_bins = n_bins
        self.min_action = float(min_action)
        self.max_action = float(max_action)
        self.descending = vocab_size is not None
        self.first_token_id = vocab_size - n_bins if vocab_size is not None else first_token_id
        self.bins = np.linspace(min_action, max_action, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    # digitize index in [1, n_bins] <-> token id
    def _index_to_id(self, index: np.ndarray) -> np.ndarray:
        if self.descending:
            return self.vocab_size - index
        return self.first_token_id + index - 1

    def _id_to_index(self, ids: np.ndarray) -> np.ndarray:
        if self.descending:
            return self.vocab_size - ids
        return ids - self.first_token_id + 1

    @property
    def token_ids(self) -> np.ndarray:
        """The `n_bins` action token ids in column order (column `j` is id `first_token_id + j`)."""
        return np.arange(self.first_token_id, self.first_token_id + self.n_bins)

    @property
    def column_values(self) -> np.ndarray:
        """The normalised value that each of the `n_bins` columns decodes to, shape `[n_bins]`."""
        return self.decode(self.token_ids)

    def encode(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalised actions (any shape) -> action token ids of the same shape (int64; torch in, torch out)."""
        values = np.clip(_as_numpy(actions).astype(np.float64), self.min_action, self.max_action)
        if not np.all(np.isfinite(values)):
            raise ValueError("Cannot encode NaN actions.")
        ids = self._index_to_id(np.digitize(values, self.bins)).astype(np.int64)
        if isinstance(actions, torch.Tensor):
            return torch.from_numpy(ids).to(actions.device)
        return ids

    def decode(self, token_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Action token ids (any shape) -> normalised actions (float32; torch in, torch out).

        Raises `ValueError` for ids outside the action range: silently clipping them (as OpenVLA's `predict_action`
        does) hides a model that emits text tokens where actions belong.
        """
        ids = _as_numpy(token_ids).astype(np.int64)
        if not np.all(self.is_action_token(ids)):
            bad = ids[~self.is_action_token(ids)]
            raise ValueError(
                f"Token ids {bad[:8].tolist()} are not action tokens (expected {self.first_token_id}.."
                f"{self.first_token_id + self.n_bins - 1})."
            )
        centre = np.clip(self._id_to_index(ids) - 1, 0, self.bin_centers.shape[0] - 1)
        values = self.bin_centers[centre].astype(np.float32)
        if isinstance(token_ids, torch.Tensor):
            return torch.from_numpy(values).to(token_ids.device)
        return values

    def is_action_token(self, token_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Boolean mask of the ids that are action tokens."""
        return (token_ids >= self.first_token_id) & (token_ids < self.first_token_id + self.n_bins)

    def token_ids_to_columns(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> column index into an action-restricted logit tensor `[..., n_bins]`."""
        return token_ids - self.first_token_id

    def columns_to_token_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """Column index into an action-restricted logit tensor -> token ids."""
        return columns + self.first_token_id

    def action_space(self, action_dim: int, chunk_size: int = 1, unnorm_key: str | None = None) -> ActionSpace:
        """The `ActionSpace` of a policy that emits `action_dim x chunk_size` tokens with this tokenizer."""
        return ActionSpace(
            action_dim=action_dim,
            chunk_size=chunk_size,
            n_bins=self.n_bins,
            first_token_id=self.first_token_id,
            descending=self.descending,
            unnorm_key=unnorm_key,
        )

    @classmethod
    def from_action_space(cls, space: ActionSpace) -> ActionTokenizer:
        """The tokenizer that produced `space`."""
        if space.descending:
            return cls(vocab_size=space.first_token_id + space.n_bins, n_bins=space.n_bins)
        return cls(first_token_id=space.first_token_id, n_bins=space.n_bins)

    def __repr__(self) -> str:
        layout = f"vocab_size={self.vocab_size}" if self.descending else f"first_token_id={self.first_token_id}"
        return f"ActionTokenizer({layout}, n_bins={self.n_bins})"


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """What two policies must agree on before one can be distilled into the other.

    A policy emits `num_action_tokens = action_dim * chunk_size` tokens per decision, in chunk-major order
    (`[t0 d0, t0 d1, ..., t1 d0, ...]`), each a distribution over `n_bins` columns; column `j` is token id
    `first_token_id + j`, and `descending` says whether higher ids mean lower values (OpenVLA's layout).
    `unnorm_key` names the normalisation statistics that map normalised values to robot actions.
    """

    action_dim: int
    chunk_size: int = 1
    n_bins: int = 256
    first_token_id: int = 31744
    descending: bool = True
    unnorm_key: str | None = None

    def __post_init__(self):
        for name in ("action_dim", "chunk_size", "n_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"ActionSpace.{name} must be positive, got {getattr(self, name)}.")

    @property
    def num_action_tokens(self) -> int:
        return self.action_dim * self.chunk_size

    def check_compatible(self, other: ActionSpace, names: tuple[str, str] = ("student", "teacher")) -> None:
        """Raise a `ValueError` that names every field in which `self` and `other` differ."""
        diffs = [
            f"{f.name}: {names[0]}={getattr(self, f.name)!r}, {names[1]}={getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]
        if diffs:
            raise ValueError(
                f"The {names[0]} and {names[1]} action spaces differ, so per-token distributions cannot be compared "
                "(distill only between policies with the same action tokenization and normalisation statistics):\n  "
                + "\n  ".join(diffs)
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------------------
# Normalisation statistics (OpenVLA's `norm_stats[unnorm_key]["action"]` layout)
# ------------------------------------------------------------------------------------------------------------------


def identity_norm_stats(action_dim: int = 7) -> dict[str, Any]:
    """Statistics under which normalisation is the identity on `[-1, 1]` (q01 = -1, q99 = 1; gripper unmasked).

    LIBERO's controller inputs already lie in `[-1, 1]`, so a tiny model without statistics of its own acts
    directly in controller units.
    """
    low, high = [-1.0] * action_dim, [1.0] * action_dim
    mask = [True] * (action_dim - 1) + [False]
    return {"action": {"q01": low, "q99": high, "min": low, "max": high, "mask": mask}}


def compute_norm_stats(
    dataset: Any,
    column: str = "action",
    normalization_mask: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Compute BOUNDS_Q99 statistics of a column of actions.

    Args:
        dataset: A `datasets.Dataset` (or anything indexable by `column`) whose `column` holds `[action_dim]` rows
            (or `[chunk, action_dim]` rows, which are flattened).
        column: The column holding the actions.
        normalization_mask: Per-dimension flags, `True` to normalise. Defaults to every dimension but the last
            (the gripper), as for OpenVLA's end-effector datasets.

    Returns:
        `{"action": {"mean", "std", "max", "min", "q01", "q99", "mask"}, "num_transitions": N}` with lists of
        floats, ready to be stored as `config.norm_stats[unnorm_key]`.
    """
    if hasattr(dataset, "column_names") and column not in dataset.column_names:
        raise ValueError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}.")
    actions = np.asarray(dataset[column], dtype=np.float64)
    if actions.ndim < 2 or actions.shape[0] == 0:
        raise ValueError(f"Expected a non-empty column of action vectors, got an array of shape {actions.shape}.")
    actions = actions.reshape(-1, actions.shape[-1])
    action_dim = actions.shape[-1]
    if normalization_mask is None:
        normalization_mask = [True] * (action_dim - 1) + [False]
    if len(normalization_mask) != action_dim:
        raise ValueError(f"`normalization_mask` has {len(normalization_mask)} entries for {action_dim}-D actions.")
    return {
        "action": {
            "mean": actions.mean(0).tolist(),
            "std": actions.std(0).tolist(),
            "max": actions.max(0).tolist(),
            "min": actions.min(0).tolist(),
            "q01": np.quantile(actions, 0.01, axis=0).tolist(),
            "q99": np.quantile(actions, 0.99, axis=0).tolist(),
            "mask": [bool(m) for m in normalization_mask],
        },
        "num_transitions": int(actions.shape[0]),
    }


def select_norm_stats(norm_stats: Mapping[str, Any] | None, unnorm_key: str | None) -> tuple[str, dict[str, Any]]:
    """Pick `norm_stats[unnorm_key]`, with the errors OpenVLA users need when the key is missing or ambiguous.

    Returns the resolved key and its statistics (the dict holding `"action"`).
    """
    if not norm_stats:
        raise ValueError(
            "This model has no normalisation statistics (`config.norm_stats` is empty), so its actions cannot be "
            "un-normalised. Compute them from your demonstrations with `trl_vla.compute_norm_stats(dataset)` and "
            "store them as `model.config.norm_stats[<unnorm_key>]`."
        )
    if unnorm_key is None:
        if len(norm_stats) > 1:
            raise ValueError(
                f"This model has statistics for {len(norm_stats)} datasets and no `unnorm_key` was given; pass one "
                f"of: {sorted(norm_stats)} (for LIBERO it is usually the suite name, e.g. 'libero_spatial')."
            )
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ValueError(
            f"`unnorm_key`={unnorm_key!r} is not in the model's norm_stats; available: {sorted(norm_stats)}."
        )
    stats = norm_stats[unnorm_key]
    if "action" not in stats or not {"q01", "q99"} <= set(stats["action"]):
        raise ValueError(f"norm_stats[{unnorm_key!r}] lacks an 'action' entry with 'q01' and 'q99'.")
    return unnorm_key, stats


def action_bounds(stats: Mapping[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(q01, q99, mask)` `[dim]` each of BOUNDS_Q99 statistics (`{"action": {...}}` or the inner dict): the robot
    values that normalise to -1 and 1, and which dimensions are normalised at all."""
    action = stats["action"] if "action" in stats else stats
    low, high = np.asarray(action["q01"], np.float64), np.asarray(action["q99"], np.float64)
    mask = np.asarray(action.get("mask", [True] * len(low)), bool)
    if low.shape[0] != dim:
        raise ValueError(f"The statistics are {low.shape[0]}-D but the actions are {dim}-D.")
    return low, high, mask


def check_norm_stats_compatible(
    stats: Mapping[str, Any],
    other: Mapping[str, Any],
    names: tuple[str, str] = ("student", "teacher"),
    rtol: float = 1e-3,
) -> None:
    """Raise a `ValueError` naming each action dimension whose BOUNDS_Q99 statistics differ between two policies.

    Two policies whose tokens are compared bin by bin must mean the same robot action by the same bin: a teacher
    whose statistics come from other demonstrations (even under the same `unnorm_key`) puts its bin `i` at another
    action, and a KL between the two distributions is then meaningless. `q01` and `q99` may differ by `rtol` of the
    dimension's range; the normalisation masks must agree.
    """
    dim = len((stats["action"] if "action" in stats else stats)["q01"])
    low, high, mask = action_bounds(stats, dim)
    other_low, other_high, other_mask = action_bounds(other, len(low))
    tolerance = rtol * np.maximum(np.abs(high - low), np.abs(other_high - other_low)) + 1e-6
    diffs = []
    for dim in range(len(low)):
        if mask[dim] != other_mask[dim]:
            diffs.append(f"dimension {dim}: normalised for the {names[0] if mask[dim] else names[1]} only")
        elif mask[dim] and (
            abs(low[dim] - other_low[dim]) > tolerance[dim] or abs(high[dim] - other_high[dim]) > tolerance[dim]
        ):
            diffs.append(
                f"dimension {dim}: {names[0]} [q01, q99] = [{low[dim]:.4g}, {high[dim]:.4g}], "
                f"{names[1]} [{other_low[dim]:.4g}, {other_high[dim]:.4g}]"
            )
    if diffs:
        raise ValueError(
            f"The {names[0]} and {names[1]} normalisation statistics differ, so the same action bin means different "
            f"robot actions for the two (give both the same statistics, e.g. the {names[0]}'s):\n  "
            + "\n  ".join(diffs)
        )


def normalize_actions(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Robot actions `[..., dim]` -> normalised actions in [-1, 1] (BOUNDS_Q99; masked-out dims pass through)."""
    actions = np.asarray(actions, np.float64)
    low, high, mask = action_bounds(stats, actions.shape[-1])
    scaled = np.clip(2.0 * (actions - low) / (high - low + 1e-8) - 1.0, -1.0, 1.0)
    scaled = np.where(high == low, 0.0, scaled)
    return np.where(mask, scaled, actions).astype(np.float32)


def unnormalize_actions(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Normalised actions `[..., dim]` -> robot actions (the inverse of `normalize_actions` inside the bounds)."""
    actions = np.asarray(actions, np.float64)
    low, high, mask = action_bounds(stats, actions.shape[-1])
    return np.where(mask, 0.5 * (actions + 1.0) * (high - low) + low, actions).astype(np.float32)
