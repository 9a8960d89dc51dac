"""The published LIBERO evaluation protocols: transforms against the published functions' outputs, presets, wiring.

The reference outputs (`fixtures/eval_protocol_reference.npz`) come from the functions of openvla/openvla,
moojink/openvla-oft and PRIME-RL/SimpleVLA-RL run with TensorFlow (`fixtures/make_eval_protocol_reference.py`).
"""

import importlib.util
import os

import numpy as np
import pytest
import torch

from trl_vla.action_tokenizer import ActionSpace
from trl_vla.envs.eval_protocols import (
    EVAL_PROTOCOLS,
    ProtocolPolicy,
    center_crop_and_resize,
    get_protocol,
    jpeg_round_trip,
    postprocess_gripper,
    resize_lanczos,
    resolve_unnorm_key,
)
from trl_vla.envs.libero import MAX_EPISODE_STEPS, NUM_WAIT_STEPS


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURES, "eval_protocol_reference.npz"))


@pytest.fixture(scope="module")
def make_image():
    spec = importlib.util.spec_from_file_location(
        "make_reference", os.path.join(FIXTURES, "make_eval_protocol_reference.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_image


def _abs_diff(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


def test_jpeg_round_trip_matches_tensorflow(reference, make_image):
    image = make_image(64)
    ours = jpeg_round_trip(image, 95)
    # The encoders agree; TensorFlow's `decode_image` uses libjpeg's fast integer IDCT, PIL the accurate one: equal
    # to TensorFlow decoding with `dct_method="INTEGER_ACCURATE"`, and within a few levels of the default decode
    # (measured: mean 1.1, max 10 on this noisy image).
    np.testing.assert_array_equal(ours, reference["tf_jpeg_accurate_idct"])
    diff = _abs_diff(ours, reference["tf_jpeg_round_trip"])
    assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())


def test_lanczos_resize_matches_tensorflow(reference, make_image):
    # tf.image.resize(lanczos3, antialias=True) + round vs PIL's LANCZOS (fixed-point weights): mostly equal or one
    # level apart (measured: mean 0.21, one pixel of 9408 two levels apart at 64 -> 56; at most 1 at 256 -> 224).
    diff = _abs_diff(resize_lanczos(make_image(64), 56), reference["tf_lanczos_no_jpeg"])
    assert diff.max() <= 2 and diff.mean() < 0.3 and (diff > 1).sum() <= 2, (diff.mean(), diff.max())


def test_rotation_jpeg_and_resize_match_get_libero_image(reference, make_image):
    # openvla `get_libero_image` / oft `resize_image_for_policy` / SimpleVLA-RL `get_libero_image` (identical outputs)
    # on the raw render; `LiberoEnv` returns it already rotated, which is the input of `preprocess_image`.
    image = make_image(64)
    protocol = get_protocol("openvla")
    ours = resize_lanczos(jpeg_round_trip(image, protocol.jpeg_quality), 56)
    diff = _abs_diff(ours, reference["rotated_resized"])
    assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())


def test_center_crop_matches_tensorflow_exactly(reference, make_image):
    ours = center_crop_and_resize(make_image(224, noise=2.0), 0.9)
    np.testing.assert_array_equal(ours, reference["center_crop"])


def test_gripper_matches_published(reference):
    actions = reference["gripper_actions"]
    ours = postprocess_gripper(actions)
    np.testing.assert_array_equal(ours, reference["gripper"])
    np.testing.assert_array_equal(ours[:, -1], [1, 1, 1, 0, -1, -1, -1, 1, -1])  # 0.5 -> sign(0) = 0, kept
    np.testing.assert_array_equal(ours[:, :6], actions[:, :6])
    assert actions[0, -1] == 0.0  # not modified in place
    np.testing.assert_array_equal(get_protocol("oft").postprocess_actions(actions), reference["gripper"])


def test_presets():
    native, openvla, oft, simple = (get_protocol(n) for n in ("native", "openvla", "oft", "simplevla_rl"))
    assert native.is_native and not any(p.is_native for p in (openvla, oft, simple))
    assert native.image_size == 128 and native.open_loop_steps is None and native.num_wait_steps == NUM_WAIT_STEPS
    for protocol in (openvla, oft, simple):
        assert protocol.image_size == 256 and protocol.resize_to == 224 and protocol.jpeg_quality == 95
        assert protocol.center_crop_scale == 0.9 and protocol.num_wait_steps == 10 and protocol.unnorm_key_from_suite
        assert protocol.gripper_normalize and protocol.gripper_binarize and protocol.gripper_invert
    assert (openvla.open_loop_steps, oft.open_loop_steps, simple.open_loop_steps) == (1, 8, None)
    assert {s: openvla.episode_steps(s) for s in MAX_EPISODE_STEPS} == MAX_EPISODE_STEPS
    assert oft.episode_steps("libero_10") == 520 and simple.episode_steps("libero_spatial") == 512
    assert get_protocol(oft) is oft and set(EVAL_PROTOCOLS) == {"native", "openvla", "oft", "simplevla_rl"}


def test_unknown_protocol_raises():
    with pytest.raises(ValueError, match="Unknown evaluation protocol 'openvla_oft'.*native"):
        get_protocol("openvla_oft")
    from trl_vla.evaluation import evaluate_policy

    with pytest.raises(ValueError, match="Unknown evaluation protocol"):
        evaluate_policy(object(), "libero_object", protocol="bogus")


def test_native_preprocessing_is_the_identity():
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    native = get_protocol("native")
    np.testing.assert_array_equal(native.preprocess_image(image), image)
    actions = np.random.default_rng(1).uniform(-1, 1, (2, 8, 7)).astype(np.float32)
    np.testing.assert_array_equal(native.postprocess_actions(actions), actions)


def test_openvla_preprocessing_chain():
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = get_protocol("openvla").preprocess_image(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    expected = center_crop_and_resize(resize_lanczos(jpeg_round_trip(image, 95), 224), 0.9)
    np.testing.assert_array_equal(out, expected)


def test_resolve_unnorm_key():
    assert (
        resolve_unnorm_key("libero_spatial", {"libero_spatial": {}, "libero_spatial_no_noops": {}}) == "libero_spatial"
    )
    assert resolve_unnorm_key("libero_spatial", {"libero_spatial_no_noops": {}}) == "libero_spatial_no_noops"
    assert resolve_unnorm_key("libero_goal", None) is None
    with pytest.raises(ValueError, match="no action statistics for 'libero_goal'"):
        resolve_unnorm_key("libero_goal", {"libero_10": {}})


class _Recorder:
    """A policy recording what it is given; actions with a `[0, 1]` gripper."""

    action_space = ActionSpace(action_dim=7, chunk_size=2, n_bins=256, first_token_id=0)

    def __init__(self):
        self.seen = None

    def build_inputs(self, observations, instructions):
        self.seen = observations
        return {"n": len(observations)}

    def action_logits(self, inputs, action_token_ids):
        raise NotImplementedError

    def sample_actions(self, inputs, temperature=1.0, generator=None):
        actions = np.zeros((inputs["n"], 2, 7), np.float32)
        actions[:, 0, -1], actions[:, 1, -1] = 1.0, 0.1
        return torch.zeros(inputs["n"], 14), torch.zeros(inputs["n"], 14), actions


def test_protocol_policy_transforms_inputs_and_actions():
    inner = _Recorder()
    policy = ProtocolPolicy(inner, "oft", "libero_object")
    assert policy.action_space == inner.action_space and policy.unnorm_key is None
    rng = np.random.default_rng(0)
    obs = {
        "image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "proprio": np.zeros(8, np.float32),
    }
    inputs = policy.build_inputs([obs], ["pick"])
    (seen,) = inner.seen
    assert seen["image"].shape == seen["wrist_image"].shape == (224, 224, 3)
    np.testing.assert_array_equal(seen["image"], get_protocol("oft").preprocess_image(obs["image"]))
    assert obs["image"].shape == (256, 256, 3) and seen["proprio"] is obs["proprio"]
    _, _, actions = policy.sample_actions(inputs, temperature=0.0)
    np.testing.assert_array_equal(actions[0, :, -1], [-1.0, 1.0])  # 1 = open -> -1; 0.1 (closing) -> +1


def test_protocol_policy_unnorm_key_with_a_tiny_openvla(tmp_path):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
    from trl_vla.testing import make_tiny_openvla

    path = make_tiny_openvla(str(tmp_path), decoding="parallel", chunk_size=2, seed=0)
    model = OpenVLAForActionPrediction.from_pretrained(path).eval()
    inner = VLAPolicy(model, OpenVLAProcessor.from_pretrained(path))
    with pytest.raises(ValueError, match="no action statistics for 'libero_object'"):
        ProtocolPolicy(inner, "openvla", "libero_object")  # the tiny model only has "libero"
    model.config.norm_stats = {**model.config.norm_stats, "libero_object_no_noops": model.config.norm_stats["libero"]}
    policy = ProtocolPolicy(inner, "openvla", "libero_object")
    assert policy.unnorm_key == "libero_object_no_noops"
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    inputs = policy.build_inputs([{"image": image, "proprio": np.zeros(8, np.float32)}], ["pick up the bowl"])
    _, _, actions = policy.sample_actions(inputs, temperature=0.0)
    _, _, raw = inner.sample_actions(
        inner.build_inputs([{"image": policy.protocol.preprocess_image(image)}], ["pick up the bowl"]), 0.0
    )
    assert actions.shape == (1, 2, 7) and set(np.unique(actions[..., -1])) <= {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(actions[..., :6], raw[..., :6], atol=1e-6)  # same statistics for the arm here
    np.testing.assert_array_equal(actions[..., -1], -np.sign(2 * raw[..., -1] - 1))
