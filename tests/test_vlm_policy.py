"""`VLMForActionPrediction` on a tiny offline Llava (SigLIP + Llama): the policy contract on a generic HF VLM."""

import copy

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from trl_vla import ActionTokenizer, compute_norm_stats, unnormalize_actions
from trl_vla.models import VLAPolicy, load_vla
from trl_vla.models.vlm_policy import (
    VLMActionConfig,
    VLMActionProcessor,
    VLMForActionPrediction,
)
from trl_vla.testing import make_tiny_openvla, make_tiny_vlm_policy
from trl_vla.trainer.sft_config import VLASFTConfig
from trl_vla.trainer.sft_trainer import VLASFTTrainer


torch.set_num_threads(1)

INSTRUCTIONS = [
    "open the microwave",
    "pick up the black bowl next to the plate and place it on the plate",
    "turn on the stove",
]
CHUNK_SIZE, ACTION_DIM, N_BINS = 2, 7, 256


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return make_tiny_vlm_policy(tmp_path_factory.mktemp("tiny_vlm"), chunk_size=CHUNK_SIZE)


@pytest.fixture(scope="module")
def model(path):
    return VLMForActionPrediction.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def processor(path):
    return VLMActionProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(images=images(3), text=INSTRUCTIONS)


def action_log_probs(logits, token_ids, first_token_id, temperature=1.0):
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, (token_ids - first_token_id)[..., None])[..., 0]


def test_tiny_checkpoint_loads_with_the_auto_classes(path):
    model, processor = load_vla(path), AutoProcessor.from_pretrained(path)
    assert isinstance(model, VLMForActionPrediction)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(path), VLMForActionPrediction)
    assert isinstance(model.vlm, LlavaForConditionalGeneration)
    assert isinstance(processor, VLMActionProcessor)
    assert (model.config.use_proprio, model.config.num_images) == (False, 1)


def test_prompt_is_left_padded_with_the_image_tokens_and_no_action_token(model, processor, inputs):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[0] == 3 and inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding, rows of different lengths
    image_token_id = model.config.vlm_config.image_token_id
    assert ((ids == image_token_id).sum(1) == (32 // 8) ** 2).all()
    assert not model.action_tokenizer.is_action_token(ids[mask.bool()]).any()
    text = processor.tokenizer.decode(ids[0][mask[0].bool()], skip_special_tokens=True)
    assert "What action should the robot take to open the microwave?" in text


def test_action_space_is_an_action_tokenizer_on_the_vocabulary_tail(model, processor, tmp_path):
    vocab = model.config.action_vocab_size
    expected = ActionTokenizer(vocab_size=vocab, n_bins=N_BINS).action_space(ACTION_DIM, CHUNK_SIZE, "libero")
    assert model.action_space == expected
    assert model.action_space.first_token_id == vocab - N_BINS
    tail = processor.tokenizer.convert_ids_to_tokens([vocab - N_BINS, vocab - 1])
    assert tail == ["<ACTION_0>", "<ACTION_255>"]
    # Same tokenizer tail as the tiny OpenVLA: a Llava student can be distilled from an OpenVLA teacher.
    openvla = load_vla(make_tiny_openvla(tmp_path / "openvla", chunk_size=CHUNK_SIZE))
    model.action_space.check_compatible(openvla.action_space)


def test_action_logits_shape_labels_loss_and_gradients(model, inputs):
    token_ids = torch.randint(0, N_BINS, (3, ACTION_DIM * CHUNK_SIZE)) + model.action_space.first_token_id
    logits = model.action_logits(inputs, token_ids)
    assert logits.shape == (3, ACTION_DIM * CHUNK_SIZE, N_BINS)

    labels = token_ids.clone()
    labels[0, 3] = -100
    output = model(**inputs, action_token_ids=token_ids, labels=labels)
    columns = (labels - model.action_space.first_token_id).masked_fill(labels == -100, -100)
    expected = F.cross_entropy(logits.flatten(0, 1), columns.flatten(), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.action_logits, logits)

    model.zero_grad()
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    vision_grad = model.vlm.model.vision_tower.embeddings.patch_embedding.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_log_probs_equal_teacher_forced_log_probs(model, inputs, temperature):
    generator = torch.Generator().manual_seed(0)
    token_ids, log_probs, actions = model.sample_actions(inputs, temperature=temperature, generator=generator)
    assert token_ids.shape == log_probs.shape == (3, ACTION_DIM * CHUNK_SIZE)
    assert model.action_tokenizer.is_action_token(token_ids).all()
    assert actions.shape == (3, CHUNK_SIZE, ACTION_DIM) and actions.dtype == np.float32
    with torch.no_grad():
        logits = model.action_logits(inputs, token_ids)
    expected = action_log_probs(logits, token_ids, model.action_space.first_token_id, temperature)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_greedy_is_deterministic_and_takes_the_teacher_forced_argmax(model, inputs):
    first = model.sample_actions(inputs, temperature=0)
    second = model.sample_actions(inputs, temperature=0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    np.testing.assert_array_equal(first[2], second[2])
    with torch.no_grad():
        logits = model.action_logits(inputs, first[0])
    first_id = model.action_space.first_token_id
    torch.testing.assert_close(logits.argmax(-1) + first_id, first[0], rtol=0, atol=0)
    # Temperature 0 reports the untempered log-probabilities.
    torch.testing.assert_close(first[1], action_log_probs(logits, first[0], first_id), atol=1e-5, rtol=1e-5)


def test_batch_equals_single_with_left_padding(model, processor, inputs):
    token_ids = torch.randint(0, N_BINS, (3, ACTION_DIM * CHUNK_SIZE)) + model.action_space.first_token_id
    with torch.no_grad():
        batch_logits = model.action_logits(inputs, token_ids)
    batch_greedy = model.sample_actions(inputs, temperature=0)[0]
    for i, (image, instruction) in enumerate(zip(images(3), INSTRUCTIONS)):
        single = processor(images=[image], text=[instruction])
        assert single["attention_mask"].all()
        with torch.no_grad():
            single_logits = model.action_logits(single, token_ids[i : i + 1])
        torch.testing.assert_close(batch_logits[i : i + 1], single_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.sample_actions(single, temperature=0)[0], batch_greedy[i : i + 1])


def test_actions_are_unnormalised_with_the_chosen_statistics(model, inputs):
    model = copy.deepcopy(model)
    stats = {"action": {"q01": [-2.0] * ACTION_DIM, "q99": [4.0] * ACTION_DIM, "mask": [True] * 6 + [False]}}
    model.config.norm_stats = {"libero": model.config.norm_stats["libero"], "scaled": stats}
    token_ids, _, actions = model.sample_actions(inputs, temperature=0, unnorm_key="scaled")
    normalised = model.action_tokenizer.decode(token_ids.numpy()).reshape(3, CHUNK_SIZE, ACTION_DIM)
    np.testing.assert_allclose(actions, unnormalize_actions(normalised, stats), rtol=1e-6)
    assert not np.allclose(actions[..., :6], normalised[..., :6])
    model.config.unnorm_key = None
    with pytest.raises(ValueError, match="no `unnorm_key` was given"):
        model.sample_actions(inputs)


def test_save_load_round_trip_keeps_the_action_settings(model, processor, inputs, tmp_path):
    model.config.norm_stats["libero"]["action"]["q99"] = [0.5] * ACTION_DIM
    try:
        model.save_pretrained(tmp_path)
        processor.save_pretrained(tmp_path)
        loaded, loaded_processor = (
            VLMForActionPrediction.from_pretrained(tmp_path),
            AutoProcessor.from_pretrained(tmp_path),
        )
    finally:
        model.config.norm_stats["libero"]["action"]["q99"] = [1.0] * ACTION_DIM
    for name in ("action_dim", "chunk_size", "n_bins", "action_vocab_size", "unnorm_key"):
        assert getattr(loaded.config, name) == getattr(model.config, name)
    assert loaded.config.norm_stats["libero"]["action"]["q99"] == [0.5] * ACTION_DIM
    assert loaded.action_space == model.action_space
    assert loaded_processor.prompt_template == processor.prompt_template
    reloaded_inputs = loaded_processor(images=images(3), text=INSTRUCTIONS)
    torch.testing.assert_close(reloaded_inputs["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(reloaded_inputs["pixel_values"], inputs["pixel_values"])
    token_ids = model.sample_actions(inputs, temperature=0)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded.action_logits(inputs, token_ids), model.action_logits(inputs, token_ids))


def test_from_vlm_keeps_the_vlm_weights(model):
    vlm = copy.deepcopy(model.vlm)
    wrapped = VLMForActionPrediction.from_vlm(vlm, action_dim=ACTION_DIM, n_bins=N_BINS, action_vocab_size=300)
    for name, tensor in model.vlm.state_dict().items():
        torch.testing.assert_close(wrapped.vlm.state_dict()[name], tensor, rtol=0, atol=0)
    assert wrapped.action_space.first_token_id == 300 - N_BINS


def test_vla_policy_runs_the_contract(model, processor):
    policy = VLAPolicy(model, processor)
    observations = [{"image": image, "proprio": np.zeros(8, np.float32)} for image in images(2)]
    policy_inputs = policy.build_inputs(observations, INSTRUCTIONS[:2])
    token_ids, log_probs, actions = policy.sample_actions(policy_inputs, temperature=1.0)
    assert actions.shape == (2, CHUNK_SIZE, ACTION_DIM)
    with torch.no_grad():
        logits = policy.action_logits(policy_inputs, token_ids)
    expected = action_log_probs(logits, token_ids, policy.action_space.first_token_id)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_clear_errors_for_layouts_that_do_not_fit(model):
    vlm_config = model.config.vlm_config
    width = vlm_config.text_config.vocab_size
    with pytest.raises(ValueError, match="fewer than the 1024 action bins"):
        VLMActionConfig(vlm_config=vlm_config, n_bins=1024)
    with pytest.raises(ValueError, match="exceeds the"):
        VLMActionConfig(vlm_config=vlm_config, action_vocab_size=width + 1)
    # The default tail (the whole logit width) would overwrite <PAD> and <image>.
    with pytest.raises(ValueError, match="image_token") as error:
        VLMActionConfig(vlm_config=vlm_config)
    assert "pad_token_id" in str(error.value)
    with pytest.raises(ValueError, match="no proprio input"):
        VLMActionConfig(vlm_config=vlm_config, action_vocab_size=300, use_proprio=True)


def test_clear_errors_for_bad_inputs(model, processor, inputs):
    first = model.action_space.first_token_id
    with pytest.raises(ValueError, match=r"shape \[batch, action_dim \* chunk_size\]"):
        model.action_logits(inputs, torch.full((3, ACTION_DIM), first))
    with pytest.raises(ValueError, match="not action tokens"):
        model.action_logits(inputs, torch.full((3, ACTION_DIM * CHUNK_SIZE), first - 1))
    right_padded = dict(inputs, attention_mask=inputs["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="right-padded"):
        model.sample_actions(right_padded)
    # Prefix-LM (PaliGemma) and M-RoPE (Qwen2-VL) families need per-token inputs this wrapper cannot extend.
    token_type_ids = torch.zeros_like(inputs["input_ids"])
    with pytest.raises(ValueError, match="'mm_token_type_ids' has one entry per prompt token"):
        model.sample_actions(dict(inputs, mm_token_type_ids=token_type_ids))
    with pytest.raises(ValueError, match="'token_type_ids' has one entry per prompt token"):
        model(
            **inputs, token_type_ids=token_type_ids, action_token_ids=torch.full((3, ACTION_DIM * CHUNK_SIZE), first)
        )
    with pytest.raises(ValueError, match="one image each"):
        processor(images=images(2), text=INSTRUCTIONS)


def test_the_sft_trainer_trains_it_and_its_checkpoint_reloads(tmp_path):
    rng = np.random.default_rng(0)
    rows = {"image": [], "instruction": [], "action": [], "episode_index": [], "frame_index": []}
    for episode in range(2):
        colour = rng.integers(0, 255, size=3, dtype=np.uint8)
        for frame in range(5):
            rows["image"].append(np.broadcast_to(colour, (32, 32, 3)).copy())
            rows["instruction"].append(INSTRUCTIONS[episode])
            rows["action"].append(np.r_[np.linspace(-0.5, 0.5, 6) * (frame + 1) / 5 * (1 - 2 * episode), -1.0])
            rows["episode_index"].append(episode)
            rows["frame_index"].append(frame)
    demos = datasets.Dataset.from_dict(rows)
    path = make_tiny_vlm_policy(
        tmp_path / "student", chunk_size=CHUNK_SIZE, norm_stats={"demo": compute_norm_stats(demos)}, unnorm_key="demo"
    )
    args = VLASFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=5,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_steps=20,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = VLASFTTrainer(
        model=VLMForActionPrediction.from_pretrained(path),
        args=args,
        train_dataset=demos,
        eval_dataset=demos,
        processing_class=VLMActionProcessor.from_pretrained(path),
    )
    first_eval = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < 0.75 * first_eval
    trainer.save_model(str(tmp_path / "final"))
    assert isinstance(load_vla(str(tmp_path / "final")), VLMForActionPrediction)
    assert isinstance(AutoProcessor.from_pretrained(str(tmp_path / "final")), VLMActionProcessor)
