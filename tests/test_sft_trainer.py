"""VLASFTTrainer: chunk targets at episode ends, tokenisation, bad input, and SFT on a tiny dataset."""

import datasets
import numpy as np
import pytest
import torch

from trl_vla import ActionTokenizer, VLAGRPOConfig, VLAOPDConfig, compute_norm_stats
from trl_vla.trainer.sft_config import VLASFTConfig
from trl_vla.trainer.sft_trainer import build_chunk_targets, tokenize_demonstrations


def _episodes(lengths, dim=2, shuffle_seed=None):
    """Rows of episodes with action value = 10 * episode + frame (every dimension), optionally shuffled."""
    episode, frame = zip(*[(e, f) for e, n in enumerate(lengths) for f in range(n)])
    episode, frame = np.array(episode), np.array(frame)
    actions = np.repeat((10 * episode + frame)[:, None], dim, axis=1).astype(np.float32)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(episode))
        episode, frame, actions = episode[order], frame[order], actions[order]
    return episode, frame, actions


def test_chunk_targets_at_episode_ends_mask_and_repeat():
    episode, frame, actions = _episodes([4, 2])
    targets, valid = build_chunk_targets(episode, frame, actions, chunk_size=3, padding="mask")
    assert targets.shape == (6, 3, 2) and valid.shape == (6, 3)
    np.testing.assert_array_equal(
        targets[:, :, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3], [10, 11, 11], [11, 11, 11]]
    )
    np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    repeated, valid = build_chunk_targets(episode, frame, actions, chunk_size=3, padding="repeat")
    np.testing.assert_array_equal(repeated, targets)
    assert valid.all()


def test_chunk_targets_follow_the_rows_order_and_chunk_one_is_the_action():
    episode, frame, actions = _episodes([5, 3, 1], shuffle_seed=0)
    targets, valid = build_chunk_targets(episode, frame, actions, chunk_size=4)
    for i in range(len(episode)):
        for k in range(4):
            expected = 10 * episode[i] + min(frame[i] + k, [5, 3, 1][episode[i]] - 1)
            assert targets[i, k, 0] == expected
            assert valid[i, k] == (frame[i] + k < [5, 3, 1][episode[i]])
    single, valid = build_chunk_targets(episode, frame, actions, chunk_size=1)
    np.testing.assert_array_equal(single[:, 0], actions)
    assert valid.all()


def test_chunk_targets_refuse_missing_frames():
    with pytest.raises(ValueError, match="non-consecutive frames"):
        build_chunk_targets([0, 0, 0], [0, 1, 3], np.zeros((3, 2)), chunk_size=2)


def _three_frame_episode():
    """One 3-frame episode of 7-D actions (0.0, 0.1, 0.2 in every dimension) as a demonstrations dataset."""
    episode, frame, actions = _episodes([3], dim=7)
    actions = actions / 10.0
    dataset = datasets.Dataset.from_dict(
        {
            "image": [np.zeros((4, 4, 3), np.uint8)] * 3,
            "instruction": ["pick"] * 3,
            "action": actions.tolist(),
            "episode_index": episode.tolist(),
            "frame_index": frame.tolist(),
        }
    )
    return actions, dataset


def test_tokenize_demonstrations_chunk_major_and_masked():
    actions, dataset = _three_frame_episode()
    tokenizer = ActionTokenizer(vocab_size=32000)
    space = tokenizer.action_space(action_dim=7, chunk_size=2, unnorm_key="demo")
    stats = compute_norm_stats(dataset)
    out = tokenize_demonstrations(dataset, space, stats)
    ids = np.array(out["action_token_ids"])
    mask = np.array(out["action_mask"])
    assert ids.shape == (3, 14) and mask.shape == (3, 14)
    # Frame 0's chunk is (frame 0, frame 1), chunk-major: the first 7 tokens encode frame 0's action.
    from trl_vla import normalize_actions

    np.testing.assert_array_equal(ids[0, :7], tokenizer.encode(normalize_actions(actions[0], stats)))
    np.testing.assert_array_equal(ids[0, 7:], tokenizer.encode(normalize_actions(actions[1], stats)))
    np.testing.assert_array_equal(mask[2], [1] * 7 + [0] * 7)
    assert mask[:2].all()
    with pytest.raises(ValueError, match="7-D but the student's action space is 3-D"):
        tokenize_demonstrations(dataset, tokenizer.action_space(action_dim=3), stats)
    with pytest.raises(ValueError, match="lacks the demonstration columns \\['episode_index'"):
        tokenize_demonstrations(dataset.remove_columns("episode_index"), space, stats)


def test_tokenize_demonstrations_prefers_the_action_chunk_column():
    actions, dataset = _three_frame_episode()
    plans = -np.stack([actions + 0.01 * k for k in range(3)], axis=1)  # [3 frames, 3 steps, 7]: not the next actions
    dataset = dataset.add_column("action_chunk", plans.tolist())
    from trl_vla import normalize_actions

    tokenizer = ActionTokenizer(vocab_size=32000)
    stats = {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}
    out = tokenize_demonstrations(dataset, tokenizer.action_space(action_dim=7, chunk_size=2), stats)
    ids, mask = np.array(out["action_token_ids"]), np.array(out["action_mask"])
    # The first 2 steps of each frame's plan, chunk-major; the last frame's chunk is whole (a plan does not run out).
    expected = tokenizer.encode(normalize_actions(plans[:, :2], stats)).reshape(3, 14)
    np.testing.assert_array_equal(ids, expected)
    assert mask.all()
    with pytest.raises(ValueError, match="plan_chunk_size=4"):
        tokenize_demonstrations(dataset, tokenizer.action_space(action_dim=7, chunk_size=4), stats)


def test_config_rejects_unknown_chunk_padding(tmp_path):
    with pytest.raises(ValueError, match="chunk_padding"):
        VLASFTConfig(output_dir=str(tmp_path), chunk_padding="zeros", use_cpu=True)


# ---------------------------------------------------------------------------------------------------------------
# Training on a tiny dataset with the tiny OpenVLA
# ---------------------------------------------------------------------------------------------------------------


def _demos(num_episodes=2, length=5, seed=0):
    """Synthetic demonstrations: each episode a constant-colour image and a ramp of actions."""
    rng = np.random.default_rng(seed)
    rows = {"image": [], "proprio": [], "instruction": [], "action": [], "episode_index": [], "frame_index": []}
    for e in range(num_episodes):
        colour = rng.integers(0, 255, size=3, dtype=np.uint8)
        for f in range(length):
            rows["image"].append(np.broadcast_to(colour, (32, 32, 3)).copy())
            rows["proprio"].append(rng.normal(size=8).astype(np.float32))
            rows["instruction"].append(["pick up the soup", "pick up the cheese"][e % 2])
            rows["action"].append(np.r_[np.linspace(-0.5, 0.5, 6) * (f + 1) / length * (1 - 2 * (e % 2)), -1.0])
            rows["episode_index"].append(e)
            rows["frame_index"].append(f)
    return datasets.Dataset.from_dict(rows)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from trl_vla.testing import make_tiny_openvla

    demos = _demos()
    path = make_tiny_openvla(
        str(tmp_path_factory.mktemp("student")),
        decoding="parallel",
        chunk_size=2,
        norm_stats={"demo": compute_norm_stats(demos)},
        unnorm_key="demo",
        image_size=32,
        seed=0,
    )
    return path, demos


def _sft(path, demos, tmp_path, **overrides):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.trainer.sft_trainer import VLASFTTrainer

    kwargs = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 5,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 20,
        "logging_steps": 5,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
    }
    kwargs.update(overrides)
    return VLASFTTrainer(
        model=OpenVLAForActionPrediction.from_pretrained(path),
        args=VLASFTConfig(**kwargs),
        train_dataset=demos,
        eval_dataset=demos,
        processing_class=OpenVLAProcessor.from_pretrained(path),
    )


def test_sft_loss_decreases_and_parameters_change(tiny_student, tmp_path):
    path, demos = tiny_student
    trainer = _sft(path, demos, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    first_eval = trainer.evaluate()["eval_loss"]
    trainer.train()
    last_eval = trainer.evaluate()["eval_loss"]
    assert last_eval < 0.5 * first_eval, (first_eval, last_eval)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 0.5 * len(before)
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {"entropy", "mean_token_accuracy", "eval_entropy", "eval_mean_token_accuracy"} <= logs


def test_sft_gradient_accumulation_matches_one_big_batch(tiny_student, tmp_path):
    # The loss is normalised by the accumulated batch's token count: 2 x 5 rows with accumulation take the same step
    # as one batch of 10 rows (the whole dataset either way).
    path, demos = tiny_student
    steps = {}
    for name, bs, ga in (("big", 10, 1), ("accumulated", 5, 2)):
        trainer = _sft(path, demos, tmp_path / name, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                       max_steps=1, learning_rate=1e-2, optim="sgd", dataloader_drop_last=False)  # fmt: skip
        trainer.train()
        steps[name] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for name, param in steps["big"].items():
        torch.testing.assert_close(param, steps["accumulated"][name], atol=1e-5, rtol=1e-4)


def test_sft_bad_inputs(tiny_student, tmp_path):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.trainer.sft_trainer import VLASFTTrainer

    path, demos = tiny_student
    with pytest.raises(ValueError, match="lacks the demonstration columns \\['action'"):
        _sft(path, demos.remove_columns("action"), tmp_path)
    with pytest.raises(TypeError, match="datasets.Dataset"):
        _sft(path, demos.to_list(), tmp_path)
    model = OpenVLAForActionPrediction.from_pretrained(path)
    model.config.norm_stats = {"other": model.config.norm_stats["demo"]}
    with pytest.raises(ValueError, match="'demo' is not in the model's norm_stats"):
        VLASFTTrainer(
            model=model,
            args=VLASFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=demos,
            processing_class=OpenVLAProcessor.from_pretrained(path),
        )


def test_add_norm_stats_stores_the_demos_statistics(tiny_student):
    from trl_vla.models import OpenVLAForActionPrediction
    from trl_vla.trainer.sft_trainer import add_norm_stats

    path, demos = tiny_student
    model = OpenVLAForActionPrediction.from_pretrained(path)
    stats = add_norm_stats(model, demos, "new_demos")
    assert model.config.norm_stats["new_demos"] == stats == compute_norm_stats(demos)
    assert "demo" in model.config.norm_stats and model.config.unnorm_key == "demo"


def test_make_tiny_sft_student_fits_the_demos(tmp_path):
    # The helper the examples and benchmarks start from: the student it writes carries the demos' statistics and
    # greedily reproduces their actions far better than the same untrained model.
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
    from trl_vla.testing import make_tiny_sft_student

    demos = _demos()
    trained = make_tiny_sft_student(
        str(tmp_path / "trained"), demos, "demo", chunk_size=2, use_proprio=True, image_size=32,
        sft_kwargs={"num_train_epochs": 30, "per_device_train_batch_size": 8, "disable_tqdm": True},
    )  # fmt: skip
    untrained = make_tiny_sft_student(str(tmp_path / "untrained"), None, "demo", chunk_size=2, image_size=32)

    def action_error(path):
        model = OpenVLAForActionPrediction.from_pretrained(path)
        policy = VLAPolicy(model.eval(), OpenVLAProcessor.from_pretrained(path))
        observations = [
            {"image": np.asarray(r["image"], np.uint8), "proprio": np.asarray(r["proprio"])} for r in demos
        ]
        _, _, actions = policy.sample_actions(policy.build_inputs(observations, demos["instruction"]), 0.0)
        return float(np.abs(actions[:, 0] - np.asarray(demos["action"])).mean()), model.config

    error, config = action_error(trained)
    untrained_error, untrained_config = action_error(untrained)
    assert config.norm_stats["demo"] == compute_norm_stats(demos) and config.use_proprio
    assert untrained_config.norm_stats["demo"]["action"]["q01"] == [-1.0] * 7  # identity statistics
    assert error < 0.25 * untrained_error, (error, untrained_error)
    assert not (tmp_path / "untrained" / "sft").exists()
    # Statistics given explicitly (e.g. a teacher's whole action range) win over the demos'.
    wide = {"action": {**compute_norm_stats(demos)["action"], "q01": [-2.0] * 7, "q99": [2.0] * 7}}
    path = make_tiny_sft_student(str(tmp_path / "wide"), None, "demo", norm_stats=wide, chunk_size=2, image_size=32)
    assert OpenVLAForActionPrediction.from_pretrained(path).config.norm_stats["demo"]["action"]["q99"] == [2.0] * 7


@pytest.mark.parametrize("config_class", [VLASFTConfig, VLAOPDConfig, VLAGRPOConfig])
def test_configs_run_float32_on_cpu_unless_asked(config_class, tmp_path):
    # TRL's bf16 default would run every CPU forward under bf16 autocast: not the numbers a model was evaluated with.
    default = config_class(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert default.bf16 is False and default.dataloader_pin_memory is False
    assert config_class(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=True).bf16 is True


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft reads transformers' old name
def test_load_student_from_a_path_or_a_model(tmp_path):
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.testing import make_tiny_openvla
    from trl_vla.trainer.student_setup import load_student

    path = make_tiny_openvla(str(tmp_path / "tiny"), decoding="parallel", chunk_size=2, seed=0)
    model, processor = load_student(path, None)
    assert isinstance(model, OpenVLAForActionPrediction) and isinstance(processor, OpenVLAProcessor)
    with pytest.raises(ValueError, match="processing_class"):
        load_student(model, None)
    from peft import LoraConfig

    wrapped, same = load_student(model, processor, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert same is processor and type(wrapped).__name__.startswith("Peft")
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in wrapped.parameters()) / 4
