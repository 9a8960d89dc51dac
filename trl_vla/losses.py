"""Per-action-token distillation losses over the action bins.

Every loss takes logits restricted to the action bins, `student_logits` and `teacher_logits` of shape `[B, A, n_bins]`,
and a validity `mask` `[B, A]` (1 for action tokens the student actually executed), divides both logit sets by the same
`temperature` used for sampling, and returns a scalar: the mean over valid tokens, or, when `num_items_in_batch` is
given, the sum over valid tokens divided by it (TRL's global-token normalisation for gradient accumulation and DDP).

Which divergence does what (p_S student, p_T teacher):

* `reverse_kl`: KL(p_S || p_T), exact over the bins. Mode-seeking: the student may drop teacher modes but is pushed out
  of every bin the teacher rules out. The default of `VLAOPDTrainer`.
* `sampled_reverse_kl`: the VLA-OPD paper's estimator (arXiv 2603.26666, Eq. 7). Per sampled token `a`, the reward
  `r = log p_T(a) - log p_S(a)` (no gradient) is the advantage of a REINFORCE update, `-(r * log p_S(a))`. Its expected
  gradient equals that of `reverse_kl` when `a ~ p_S`; it is the objective the paper reports.
* `forward_kl`: KL(p_T || p_S). Mode-covering: the student spreads over every teacher mode (entropy rises).
* `generalized_jsd`: TRL's generalized JSD; `beta=0` forward KL, `beta=1` reverse KL, `beta=0.5` symmetric JSD.
* `hard_ce`: cross-entropy on the teacher's argmax bin (DAgger-style labels). Discards the teacher's uncertainty
  (entropy collapses).

Also here, the other per-token objectives and statistics the trainers and models share: `action_cross_entropy`
(behaviour cloning on action bins), `token_entropy`, and GRPO's
`group_advantages` and `clipped_policy_loss` (the sparse-reward baseline of `VLAGRPOTrainer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


__all__ = [
    "LOSSES",
    "action_cross_entropy",
    "clipped_policy_loss",
    "forward_kl",
    "generalized_jsd",
    "group_advantages",
    "hard_ce",
    "reverse_kl",
    "sampled_reverse_kl",
    "token_entropy",
]


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "in shape; both must be [B, A, n_bins] over the same action space."
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"`mask` has shape {tuple(mask.shape)}, expected {tuple(student_logits.shape[:-1])}.")


def action_cross_entropy(action_logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of action-bin logits `[B, A, n_bins]` against target columns `[B, A]` (`-100`: ignored),
    in float32: the loss the models' forwards return for `labels`."""
    return F.cross_entropy(action_logits.flatten(0, 1).float(), columns.flatten(), ignore_index=-100)


def token_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each token's distribution, from its log-probabilities `[..., n_bins]`; returns `[...]`."""
    return -(log_probs.exp() * log_probs).sum(-1)


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, num_items_in_batch: torch.Tensor | float | None):
    # per_token, mask: [B, A]
    total = (per_token * mask).sum()
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return total / denominator


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"The loss temperature must be positive, got {temperature}.")
    return F.log_softmax(logits.float() / temperature, dim=-1)


def reverse_kl(student_logits, teacher_logits, mask, temperature=1.0, num_items_in_batch=None, **kwargs):
    """Exact KL(p_S || p_T) per action token, summed over the `n_bins` bins."""
    _check(student_logits, teacher_logits, mask)
    log_s = _log_probs(student_logits, temperature)  # [B, A, n_bins]
    log_t = _log_probs(teacher_logits, temperature)  # [B, A, n_bins]
    per_token = (log_s.exp() * (log_s - log_t)).sum(-1)  # [B, A]
    return _reduce(per_token, mask.to(per_token.dtype), num_items_in_batch)


def forward_kl(student_logits, teacher_logits, mask, temperature=1.0, num_items_in_batch=None, **kwargs):
    """Exact KL(p_T || p_S) per action token, summed over the `n_bins` bins."""
    _check(student_logits, teacher_logits, mask)
    log_s = _log_probs(student_logits, temperature)
    log_t = _log_probs(teacher_logits, temperature)
    per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    return _reduce(per_token, mask.to(per_token.dtype), num_items_in_batch)


def generalized_jsd(
    student_logits, teacher_logits, mask, temperature=1.0, num_items_in_batch=None, beta=0.5, **kwargs
):
    """TRL's generalized Jensen-Shannon divergence: `beta=0` is forward KL, `beta=1` reverse KL.

    Otherwise, with the mixture `m = beta * p_T + (1 - beta) * p_S`: `beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1], got {beta}.")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature, num_items_in_batch)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature, num_items_in_batch)
    _check(student_logits, teacher_logits, mask)
    log_s = _log_probs(student_logits, temperature)
    log_t = _log_probs(teacher_logits, temperature)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
    kl_t_m = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s_m = (log_s.exp() * (log_s - log_m)).sum(-1)
    per_token = beta * kl_t_m + (1.0 - beta) * kl_s_m
    return _reduce(per_token, mask.to(per_token.dtype), num_items_in_batch)


def hard_ce(student_logits, teacher_logits, mask, temperature=1.0, num_items_in_batch=None, **kwargs):
    """Cross-entropy of the student on the teacher's most likely bin (DAgger with the teacher as labeller)."""
    _check(student_logits, teacher_logits, mask)
    log_s = _log_probs(student_logits, temperature)
    target = teacher_logits.argmax(-1, keepdim=True)  # [B, A, 1]
    per_token = -log_s.gather(-1, target).squeeze(-1)
    return _reduce(per_token, mask.to(per_token.dtype), num_items_in_batch)


def sampled_reverse_kl(
    student_logits,
    teacher_logits,
    mask,
    temperature=1.0,
    num_items_in_batch=None,
    action_columns=None,
    old_log_probs=None,
    clip_epsilon=None,
    **kwargs,
):
    """The VLA-OPD policy gradient on the student's sampled tokens.

    Args:
        action_columns (`torch.LongTensor` `[B, A]`): the column (bin) of each sampled action token.
        old_log_probs (`torch.Tensor` `[B, A]`, *optional*): log p_S(a) when the token was sampled. Needed only with
            `clip_epsilon`.
        clip_epsilon (`float`, *optional*): PPO-style ratio clipping for reusing stale samples
            (`num_iterations > 1`); the paper uses none. Then the loss is
            `-min(ratio * r, clip(ratio, 1 - eps, 1 + eps) * r)` with `ratio = p_S(a) / p_S_old(a)`.

    The reward `r = log p_T(a) - log p_S(a)` is computed without gradient (stop-gradient on the student term, as in the
    paper); the loss is `-(r * log p_S(a))` averaged over valid tokens.
    """
    _check(student_logits, teacher_logits, mask)
    if action_columns is None:
        raise ValueError("`sampled_reverse_kl` needs `action_columns`, the bins the student sampled.")
    log_s = _log_probs(student_logits, temperature).gather(-1, action_columns.unsqueeze(-1)).squeeze(-1)  # [B, A]
    log_t = _log_probs(teacher_logits, temperature).gather(-1, action_columns.unsqueeze(-1)).squeeze(-1)  # [B, A]
    reward = (log_t - log_s).detach()
    if clip_epsilon is None:
        per_token = -reward * log_s
    else:
        if old_log_probs is None:
            raise ValueError("Ratio clipping (`clip_epsilon`) needs `old_log_probs`.")
        ratio = torch.exp(log_s - old_log_probs.float())
        clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
        per_token = -torch.minimum(ratio * reward, clipped * reward)
    return _reduce(per_token, mask.to(per_token.dtype), num_items_in_batch)


LOSSES = {
    "reverse_kl": reverse_kl,
    "sampled_reverse_kl": sampled_reverse_kl,
    "forward_kl": forward_kl,
    "generalized_jsd": generalized_jsd,
    "hard_ce": hard_ce,
}


# ------------------------------------------------------------------------------------------------------------------
# GRPO's objective (the sparse-reward baseline of `VLAGRPOTrainer`)
# ------------------------------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    eps: float = 1e-6,
    batch_std: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Group-relative advantages of episodes laid out group by group (`rewards[g * G : (g + 1) * G]` is group `g`).

    Args:
        rewards: `[num_groups * G]` episode rewards.
        num_generations: The group size `G` (at least 2).
        scale_rewards: `"group"`: `(r - group mean) / (group std + eps)` with the unbiased std (SimpleVLA-RL's GRPO);
            `"batch"`: divide by the std over all `rewards` instead; `"none"`: `r - group mean`.
        eps: Added to the std.
        batch_std: With `"batch"`, the std to divide by instead of that of `rewards` (the std over every process's
            rewards in a distributed round).

    Returns:
        `[num_groups * G]` advantages; exactly zero for every episode of a group whose rewards are all equal.
    """
    if num_generations < 2:
        raise ValueError(f"Group-relative advantages need groups of at least 2 episodes, got {num_generations}.")
    if rewards.ndim != 1 or rewards.numel() % num_generations != 0:
        raise ValueError(
            f"`rewards` must be 1-D with a length divisible by num_generations={num_generations}, got shape "
            f"{tuple(rewards.shape)}."
        )
    grouped = rewards.float().view(-1, num_generations)  # [num_groups, G]
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_rewards == "group":
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        if batch_std is None:
            batch_std = rewards.float().std() if rewards.numel() > 1 else rewards.new_zeros(())
        centred = centred / (batch_std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"`scale_rewards` must be 'group', 'batch' or 'none', got {scale_rewards!r}.")
    return centred.flatten()


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    num_items_in_batch: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate with an asymmetric clip, summed over valid tokens.

    Per token, with `ratio = exp(log_probs - old_log_probs)`:
    `loss = max(-A * ratio, -A * clip(ratio, 1 - epsilon_low, 1 + epsilon_high))`.

    Args:
        log_probs: `[B, A]` log-probabilities of the sampled tokens under the current policy (with gradients).
        old_log_probs: `[B, A]` the same at sampling time.
        advantages: `[B, A]` (or `[B, 1]`, broadcast) advantage of each token.
        mask: `[B, A]` 1 for tokens that count.
        epsilon_low, epsilon_high: The clip range `[1 - epsilon_low, 1 + epsilon_high]`.
        num_items_in_batch: Divide the token sum by this (the global token count); default: the valid tokens here.

    Returns:
        `(loss, stats)`, stats holding per-token `[B, A]` float tensors: `low_clipped` (ratio below the range with a
        negative advantage), `high_clipped` (above the range with a positive advantage), `ratio`.
    """
    mask = mask.to(log_probs.dtype)
    ratio = torch.exp(log_probs - old_log_probs.to(log_probs.dtype))
    advantages = advantages.to(log_probs.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = torch.maximum(unclipped, clipped)
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = (per_token * mask).sum() / denominator
    with torch.no_grad():
        stats = {
            "low_clipped": ((ratio < 1.0 - epsilon_low) & (advantages < 0)).to(log_probs.dtype),
            "high_clipped": ((ratio > 1.0 + epsilon_high) & (advantages > 0)).to(log_probs.dtype),
            "ratio": ratio.detach(),
        }
    return loss, stats
