import datasets
import numpy as np
import pytest
import torch

from trl_vla import (
    ActionSpace,
    ActionTokenizer,
    compute_norm_stats,
    identity_norm_stats,
    normalize_actions,
    select_norm_stats,
    unnormalize_actions,
)


def test_openvla_layout_exact():
    tok = ActionTokenizer(vocab_size=32000)
    assert tok.first_token_id == 31744
    assert tok.token_ids[0] == 31744 and tok.token_ids[-1] == 31999
    assert len(tok.bin_centers) == 255
    np.testing.assert_array_equal(tok.bins, np.linspace(-1, 1, 256))
    # -1 -> digitize index 1 -> id 31999; +1 -> index 256 -> id 31744; values ascend as ids descend
    np.testing.assert_array_equal(tok.encode(np.array([-1.0, 0.0, 1.0])), [31999, 31872, 31744])
    values = np.linspace(-0.99, 0.99, 50)
    assert np.all(np.diff(tok.encode(values)) <= 0)


def test_openvla_decode_matches_reference_formula():
    tok = ActionTokenizer(vocab_size=32000)
    ids = np.arange(31744, 32000)
    # OpenVLA: idx = clip(vocab - id - 1, 0, 254); value = bin_centers[idx]
    expected = tok.bin_centers[np.clip(32000 - ids - 1, 0, 254)]
    np.testing.assert_allclose(tok.decode(ids), expected, rtol=0, atol=1e-7)
    # the two top ids decode to the same (top) centre: 255 distinct values
    assert len(np.unique(tok.decode(ids))) == 255


def test_round_trip_error_within_half_bin_and_clipping():
    tok = ActionTokenizer(vocab_size=32000)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(100, 7))
    decoded = tok.decode(tok.encode(actions))
    assert np.abs(decoded - actions).max() <= (2 / 255) / 2 + 1e-6
    # out-of-range values clip to the edge tokens
    np.testing.assert_array_equal(tok.encode(np.array([-5.0, 5.0])), tok.encode(np.array([-1.0, 1.0])))


def test_torch_in_torch_out():
    tok = ActionTokenizer(vocab_size=32000)
    ids = tok.encode(torch.tensor([[0.5, -0.5]]))
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64
    values = tok.decode(ids)
    assert isinstance(values, torch.Tensor) and values.shape == (1, 2)


def test_contiguous_layout_ascending():
    tok = ActionTokenizer(first_token_id=1000, n_bins=256)
    assert tok.token_ids[0] == 1000 and tok.token_ids[-1] == 1255
    assert tok.encode(np.array([-1.0]))[0] == 1000
    assert tok.encode(np.array([1.0]))[0] == 1255
    np.testing.assert_allclose(tok.column_values, np.sort(tok.column_values))


def test_columns_are_token_offsets():
    tok = ActionTokenizer(vocab_size=32000)
    ids = torch.tensor([31744, 31999])
    cols = tok.token_ids_to_columns(ids)
    assert cols.tolist() == [0, 255]
    assert torch.equal(tok.columns_to_token_ids(cols), ids)
    np.testing.assert_allclose(tok.column_values, tok.decode(tok.token_ids))


def test_bad_arguments_and_ids():
    with pytest.raises(ValueError, match="exactly one"):
        ActionTokenizer()
    with pytest.raises(ValueError, match="exactly one"):
        ActionTokenizer(vocab_size=32000, first_token_id=5)
    with pytest.raises(ValueError, match="at least"):
        ActionTokenizer(vocab_size=100)
    tok = ActionTokenizer(vocab_size=32000)
    with pytest.raises(ValueError, match="not action tokens"):
        tok.decode(np.array([5, 31800]))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.array([np.nan]))


def test_action_space_compatibility_names_the_field():
    tok = ActionTokenizer(vocab_size=32000)
    student = tok.action_space(action_dim=7, chunk_size=8, unnorm_key="libero_spatial")
    assert student.num_action_tokens == 56
    student.check_compatible(tok.action_space(action_dim=7, chunk_size=8, unnorm_key="libero_spatial"))
    with pytest.raises(ValueError, match="chunk_size: student=8, teacher=1"):
        student.check_compatible(tok.action_space(action_dim=7, chunk_size=1, unnorm_key="libero_spatial"))
    with pytest.raises(ValueError, match="unnorm_key"):
        student.check_compatible(tok.action_space(action_dim=7, chunk_size=8, unnorm_key="libero_goal"))
    other = ActionTokenizer(first_token_id=32000).action_space(action_dim=7, chunk_size=8, unnorm_key="libero_spatial")
    with pytest.raises(ValueError, match="first_token_id") as err:
        student.check_compatible(other)
    assert "descending" in str(err.value)
    assert ActionTokenizer.from_action_space(student).first_token_id == 31744
    with pytest.raises(ValueError, match="positive"):
        ActionSpace(action_dim=0)


def test_norm_stats_from_dataset_and_round_trip():
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.normal(0, 0.3, size=(500, 6)), rng.choice([-1.0, 1.0], size=(500, 1))], axis=1)
    ds = datasets.Dataset.from_dict({"action": actions.tolist()})
    stats = compute_norm_stats(ds)
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == 500
    np.testing.assert_allclose(stats["action"]["q01"][:6], np.quantile(actions[:, :6], 0.01, axis=0))
    normed = normalize_actions(actions, stats)
    assert normed.min() >= -1 and normed.max() <= 1
    np.testing.assert_array_equal(normed[:, 6], actions[:, 6])  # gripper passes through
    inside = np.all((actions[:, :6] > stats["action"]["q01"][:6]) & (actions[:, :6] < stats["action"]["q99"][:6]), 1)
    np.testing.assert_allclose(unnormalize_actions(normed, stats)[inside], actions[inside], atol=1e-5)


def test_norm_stats_errors():
    with pytest.raises(ValueError, match="no column"):
        compute_norm_stats(datasets.Dataset.from_dict({"a": [[0.0]]}))
    with pytest.raises(ValueError, match="normalization_mask"):
        compute_norm_stats(datasets.Dataset.from_dict({"action": [[0.0, 1.0]]}), normalization_mask=[True])
    stats = {"action": {"q01": [0.0], "q99": [1.0]}}
    assert select_norm_stats({"only": stats}, None) == ("only", stats)
    with pytest.raises(ValueError, match="pass one of: \\['a', 'b'\\]"):
        select_norm_stats({"a": stats, "b": stats}, None)
    with pytest.raises(ValueError, match="not in the model's norm_stats"):
        select_norm_stats({"a": stats}, "libero_spatial")
    with pytest.raises(ValueError, match="no normalisation statistics"):
        select_norm_stats({}, None)
    with pytest.raises(ValueError, match="2-D"):
        normalize_actions(np.zeros((3, 2)), stats)


def test_norm_stats_compatibility_names_the_dimension():
    from trl_vla.action_tokenizer import check_norm_stats_compatible

    def stats(q01, q99, mask=(True, True, False)):
        return {"action": {"q01": list(q01), "q99": list(q99), "mask": list(mask)}}

    base = stats([-1.0, -0.5, -1.0], [1.0, 0.5, 1.0])
    check_norm_stats_compatible(base, stats([-1.0, -0.5002, -1.0], [1.0, 0.5, 1.0]))  # within 1e-3 of the range
    check_norm_stats_compatible(base, stats([-1.0, -0.5, 0.0], [1.0, 0.5, 9.0]))  # dimension 2 is not normalised
    with pytest.raises(
        ValueError, match=r"\n  dimension 1: student \[q01, q99\] = \[-0.5, 0.5\], teacher \[-0.4, 0.5\]$"
    ):
        check_norm_stats_compatible(base, stats([-1.0, -0.4, -1.0], [1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="dimension 2: normalised for the teacher only"):
        check_norm_stats_compatible(base, stats([-1.0, -0.5, -1.0], [1.0, 0.5, 1.0], (True, True, True)))
    with pytest.raises(ValueError, match="3-D but the actions are 2-D"):
        check_norm_stats_compatible(stats([0, 0], [1, 1], (True, True)), base)


def test_identity_norm_stats_leave_controller_units_unchanged():
    stats = identity_norm_stats(7)
    actions = np.array([[-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, -1.0], [0.3, -0.3, 0.9, -0.9, 0.1, -0.1, 1.0]])
    np.testing.assert_allclose(normalize_actions(actions, stats), actions, atol=1e-6)
    np.testing.assert_allclose(unnormalize_actions(actions, stats), actions, atol=1e-6)
    assert stats["action"]["mask"] == [True] * 6 + [False]
