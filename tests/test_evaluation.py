"""evaluate_policy on the real LIBERO simulator with the tiny OpenVLA student, and the forgetting report."""

import json
import os

import evaluate
import pytest

from trl_vla.evaluation import forgetting_report


SUITE = "libero_object"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
    from trl_vla.testing import make_tiny_openvla

    path = make_tiny_openvla(str(tmp_path_factory.mktemp("student")), decoding="parallel", chunk_size=8, seed=0)
    model = OpenVLAForActionPrediction.from_pretrained(path).eval()
    return VLAPolicy(model, OpenVLAProcessor.from_pretrained(path))


@pytest.mark.slow
def test_evaluate_policy_structure_videos_and_determinism(policy, tmp_path):
    from trl_vla.evaluation import evaluate_policy
    from trl_vla.rollout import make_env_pool

    # One in-process simulator for every evaluation (a fresh pool per call would rebuild LIBERO each time).
    envs = make_env_pool(num_workers=0, image_size=64)
    kwargs = {
        "task_ids": [0],
        "episodes_per_task": 2,
        "seed": 0,
        "envs": envs,
        "max_episode_steps": 16,
        "progress": False,
    }
    first = evaluate_policy(policy, SUITE, video_dir=str(tmp_path / "videos"), **kwargs)
    assert first["suite"] == SUITE and first["task_ids"] == [0] and first["num_episodes"] == 2
    assert first["episodes_per_task"] == 2 and first["temperature"] == 0.0
    assert 0.0 <= first["success_rate"] <= 1.0 and first["num_successes"] == round(2 * first["success_rate"])
    (task,) = first["per_task"]
    assert task["task_id"] == 0 and len(task["successes"]) == 2 and "basket" in task["instruction"]
    assert 0 < first["mean_episode_length"] <= 16
    failures = 2 - first["num_successes"]
    assert len(first["videos"]) == failures and all(os.path.exists(v) for v in first["videos"])
    if failures:  # replayed with every env step rendered: the reset frame and one per step (16), not one per chunk
        import imageio.v2 as imageio

        assert len(imageio.mimread(first["videos"][0])) == 17

    assert first["init_state_ids"] == [0, 1] and first["success_interval"][0] <= first["success_rate"]

    second = evaluate_policy(policy, SUITE, **kwargs)
    for key in ("success_rate", "per_task", "mean_episode_length", "num_successes"):
        assert first[key] == second[key], key
    # Sampling is seeded too.
    sampled = [evaluate_policy(policy, SUITE, temperature=1.0, **kwargs) for _ in range(2)]
    assert sampled[0]["mean_episode_length"] == sampled[1]["mean_episode_length"]
    assert sampled[0]["per_task"] == sampled[1]["per_task"]

    # Chosen init states: the episodes of init states 1 and 0 are those of the run above, in that order.
    chosen = evaluate_policy(
        policy, SUITE, init_state_ids=[1, 0], **{k: v for k, v in kwargs.items() if k != "episodes_per_task"}
    )
    assert chosen["init_state_ids"] == [1, 0] and chosen["episodes_per_task"] == 2
    assert chosen["per_task"][0]["successes"] == first["per_task"][0]["successes"][::-1]

    # Loggable with `evaluate` (JSON on disk, no Hub).
    path = tmp_path / "results.json"
    evaluate.save(str(path), **first)
    saved = json.loads(path.read_text())
    assert saved["success_rate"] == first["success_rate"] and saved["per_task"] == first["per_task"]
    envs.close()


def test_as_policy_takes_a_model_or_a_checkpoint_path(policy):
    import copy

    import numpy as np
    import torch

    from trl_vla.models import VLAPolicy, as_policy

    observations = [{"image": np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)}]
    expected = policy.sample_actions(policy.build_inputs(observations, ["pick"]), temperature=0.0)[0]
    path = policy.model.config._name_or_path
    for given in (policy.model, path):  # the processor is found next to the weights
        converted = as_policy(given)
        assert isinstance(converted, VLAPolicy)
        got = converted.sample_actions(converted.build_inputs(observations, ["pick"]), temperature=0.0)[0]
        assert torch.equal(got, expected)
    assert as_policy(policy) is policy
    bare = type(policy.model)(copy.deepcopy(policy.model.config))
    bare.config._name_or_path = ""
    with pytest.raises(ValueError, match="No processor for this OpenVLAForActionPrediction: pass `processor=`"):
        as_policy(bare)
    assert as_policy(bare, policy.processor).model is bare


def test_evaluate_policy_bad_inputs(policy):
    from trl_vla.evaluation import evaluate_policy

    with pytest.raises(TypeError, match="Expected a policy .*; got dict"):
        evaluate_policy({"weights": None}, SUITE, episodes_per_task=1, num_envs=0)

    with pytest.raises(ValueError, match="Unknown LIBERO suite 'libero_nope'"):
        evaluate_policy(policy, "libero_nope", episodes_per_task=1, num_envs=0)
    with pytest.raises(ValueError, match="episodes_per_task"):
        evaluate_policy(policy, SUITE, episodes_per_task=51)
    with pytest.raises(ValueError, match="temperature"):
        evaluate_policy(policy, SUITE, episodes_per_task=1, temperature=-1.0)


def test_wilson_interval():
    from trl_vla.evaluation import format_success, wilson_interval

    low, high = wilson_interval(0, 16)
    assert low == 0.0 and high == pytest.approx(0.1936, abs=1e-4)
    low, high = wilson_interval(8, 16)
    assert (low, high) == (pytest.approx(0.2800, abs=1e-4), pytest.approx(0.7200, abs=1e-4))
    assert wilson_interval(16, 16)[1] == 1.0 and wilson_interval(16, 16)[0] == pytest.approx(0.8064, abs=1e-4)
    assert format_success(6, 16) == "37.5% [18.5, 61.4] (6/16)"
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(17, 16)
    with pytest.raises(ValueError, match="episodes"):
        wilson_interval(0, 0)


def _results(suite, rates):
    return {
        "suite": suite,
        "per_task": [{"task_id": t, "success_rate": r, "successes": [], "instruction": ""} for t, r in rates.items()],
    }


def test_forgetting_report():
    before = {
        "libero_object": _results("libero_object", {8: 0.5, 9: 1.0}),
        "libero_spatial": _results("libero_spatial", {8: 0.25}),
    }
    after = {
        "libero_object": _results("libero_object", {8: 0.0, 9: 1.0}),
        "libero_spatial": _results("libero_spatial", {8: 0.75}),
    }
    report = forgetting_report(before, after)
    assert [(r["suite"], r["task_id"], r["change"]) for r in report["tasks"]] == [
        ("libero_object", 8, -0.5),
        ("libero_object", 9, 0.0),
        ("libero_spatial", 8, 0.5),
    ]
    assert report["before"] == pytest.approx(1.75 / 3) and report["change"] == pytest.approx(0.0)
    # A single evaluate_policy result works too.
    single = forgetting_report(_results("libero_object", {8: 1.0}), _results("libero_object", {8: 0.25}))
    assert single["change"] == -0.75
    with pytest.raises(ValueError, match="different tasks"):
        forgetting_report(_results("libero_object", {8: 1.0}), _results("libero_object", {9: 1.0}))
