import math

import pytest
import torch

from trl_vla.losses import forward_kl, generalized_jsd, hard_ce, reverse_kl, sampled_reverse_kl, token_entropy


def _logits(seed, shape=(2, 3, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_reverse_kl_hand_computed():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    s, t = p.log().view(1, 1, 3), q.log().view(1, 1, 3)
    mask = torch.ones(1, 1)
    expected_rev = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    expected_fwd = sum(qi * math.log(qi / pi) for pi, qi in zip(p.tolist(), q.tolist()))
    assert reverse_kl(s, t, mask).item() == pytest.approx(expected_rev, abs=1e-6)
    assert forward_kl(s, t, mask).item() == pytest.approx(expected_fwd, abs=1e-6)
    assert hard_ce(s, t, mask).item() == pytest.approx(-math.log(0.2), abs=1e-6)  # teacher argmax is bin 1


def test_zero_iff_equal_and_positive_otherwise():
    s = _logits(0)
    mask = torch.ones(2, 3)
    for loss in (reverse_kl, forward_kl, generalized_jsd):
        assert loss(s, s.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(s, _logits(1), mask).item() > 1e-3


def test_forward_kl_penalises_missed_teacher_modes_more_than_reverse():
    # bimodal teacher, student on one mode: forward KL (mode-covering) is large, reverse KL (mode-seeking) small
    teacher = torch.log(torch.tensor([0.49, 0.01, 0.49, 0.01])).view(1, 1, 4)
    student = torch.log(torch.tensor([0.97, 0.01, 0.01, 0.01])).view(1, 1, 4)
    mask = torch.ones(1, 1)
    assert forward_kl(student, teacher, mask).item() > 2 * reverse_kl(student, teacher, mask).item()


def test_jsd_limits_match_trl_semantics():
    s, t, mask = _logits(0), _logits(1), torch.ones(2, 3)
    assert generalized_jsd(s, t, mask, beta=0.0).item() == pytest.approx(forward_kl(s, t, mask).item())
    assert generalized_jsd(s, t, mask, beta=1.0).item() == pytest.approx(reverse_kl(s, t, mask).item())
    # symmetric JSD is bounded by log 2 and symmetric in its arguments
    jsd = generalized_jsd(s, t, mask, beta=0.5).item()
    assert 0 < jsd <= math.log(2) + 1e-6
    assert generalized_jsd(t, s, mask, beta=0.5).item() == pytest.approx(jsd, abs=1e-6)


def test_mask_and_global_normalisation():
    s, t = _logits(0), _logits(1)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    only_valid = reverse_kl(s[:1, :2], t[:1, :2], torch.ones(1, 2))
    assert reverse_kl(s, t, mask).item() == pytest.approx(only_valid.item(), abs=1e-6)
    # sum / N with N the global token count
    assert reverse_kl(s, t, mask, num_items_in_batch=4).item() == pytest.approx(only_valid.item() / 2, abs=1e-6)
    # a fully masked batch contributes 0, not NaN
    assert reverse_kl(s, t, torch.zeros(2, 3)).item() == 0.0


def test_temperature_applies_to_both():
    s, t, mask = _logits(0), _logits(1), torch.ones(2, 3)
    assert reverse_kl(s, t, mask, temperature=2.0).item() == pytest.approx(reverse_kl(s / 2, t / 2, mask).item())
    with pytest.raises(ValueError, match="positive"):
        reverse_kl(s, t, mask, temperature=0.0)


def test_sampled_reverse_kl_gradient_is_unbiased_estimate_of_exact():
    torch.manual_seed(0)
    teacher = _logits(1, (1, 1, 6))
    student = _logits(2, (1, 1, 6)).requires_grad_(True)
    mask = torch.ones(1, 1)
    reverse_kl(student, teacher, mask).backward()
    exact_grad = student.grad.clone()
    student.grad = None
    n = 20000
    columns = torch.multinomial(torch.softmax(student.detach().view(-1), -1), n, replacement=True).view(1, n)
    sampled_reverse_kl(
        student.expand(1, n, 6), teacher.expand(1, n, 6), torch.ones(1, n), action_columns=columns
    ).backward()
    torch.testing.assert_close(student.grad, exact_grad, atol=0.03, rtol=0.1)


def test_sampled_reverse_kl_value_and_clipping():
    s, t = _logits(0), _logits(1)
    cols = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3)
    log_s = torch.log_softmax(s, -1)[..., 0]
    log_t = torch.log_softmax(t, -1)[..., 0]
    expected = (-(log_t - log_s) * log_s).mean()
    assert sampled_reverse_kl(s, t, mask, action_columns=cols).item() == pytest.approx(expected.item(), abs=1e-5)
    # ratio 1 (fresh samples): clipping changes nothing
    clipped = sampled_reverse_kl(s, t, mask, action_columns=cols, old_log_probs=log_s, clip_epsilon=0.2)
    assert clipped.item() == pytest.approx((-(log_t - log_s)).mean().item(), abs=1e-5)
    with pytest.raises(ValueError, match="action_columns"):
        sampled_reverse_kl(s, t, mask)
    with pytest.raises(ValueError, match="old_log_probs"):
        sampled_reverse_kl(s, t, mask, action_columns=cols, clip_epsilon=0.2)


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        reverse_kl(_logits(0), _logits(1, (2, 3, 4)), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        reverse_kl(_logits(0), _logits(1), torch.ones(2, 2))


def test_token_entropy_in_nats():
    uniform = torch.log_softmax(torch.zeros(2, 3, 256), -1)
    torch.testing.assert_close(token_entropy(uniform), torch.full((2, 3), math.log(256)))
    peaked = torch.log_softmax(torch.tensor([[50.0, 0.0, 0.0, 0.0]]), -1)
    assert token_entropy(peaked).item() < 1e-18
    two = torch.log(torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(token_entropy(two), torch.tensor(math.log(2)))
