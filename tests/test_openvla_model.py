"""OpenVLA on transformers 5: checkpoint-compatible names, save/load, both decoding modes, batching, the policy contract."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from trl_vla import ActionPolicy
from trl_vla.models import (
    OpenVLAConfig,
    OpenVLAForActionPrediction,
    OpenVLAProcessor,
    VLAPolicy,
    load_vla,
)
from trl_vla.testing import make_tiny_openvla, tiny_llama_config


torch.set_num_threads(1)

INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "open the top drawer",
    "put the bowl on the stove",
]


def images(n: int, seed: int = 0, size: int = 128) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def load(path):
    return OpenVLAForActionPrediction.from_pretrained(path).eval(), OpenVLAProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def ar_path(tmp_path_factory):
    return make_tiny_openvla(tmp_path_factory.mktemp("ar"), decoding="autoregressive", chunk_size=2, seed=0)


@pytest.fixture(scope="module")
def parallel_path(tmp_path_factory):
    return make_tiny_openvla(tmp_path_factory.mktemp("parallel"), decoding="parallel", chunk_size=2, seed=1)


@pytest.fixture(scope="module")
def ar(ar_path):
    return load(ar_path)


@pytest.fixture(scope="module")
def parallel(parallel_path):
    return load(parallel_path)


@pytest.fixture(params=["ar", "parallel"])
def model_and_processor(request):
    return request.getfixturevalue(request.param)


def random_action_ids(model, batch: int, seed: int = 0) -> torch.Tensor:
    space = model.action_space
    generator = torch.Generator().manual_seed(seed)
    columns = torch.randint(0, space.n_bins, (batch, space.num_action_tokens), generator=generator)
    return columns + space.first_token_id


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint compatibility
# ----------------------------------------------------------------------------------------------------------------


def test_state_dict_names_follow_openvla_checkpoint(ar):
    model, _ = ar
    keys = set(model.state_dict())
    expected = {
        "vision_backbone.featurizer.cls_token",
        "vision_backbone.featurizer.reg_token",
        "vision_backbone.featurizer.pos_embed",
        "vision_backbone.featurizer.patch_embed.proj.weight",
        "vision_backbone.featurizer.blocks.0.attn.qkv.weight",
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor",
        "vision_backbone.featurizer.blocks.1.ls2.scale_factor",
        "vision_backbone.featurizer.norm.weight",
        "vision_backbone.fused_featurizer.pos_embed",
        "vision_backbone.fused_featurizer.blocks.1.mlp.fc2.bias",
        "vision_backbone.fused_featurizer.attn_pool.latent",
        "projector.fc1.weight",
        "projector.fc1.bias",
        "projector.fc2.weight",
        "projector.fc3.weight",
        "projector.fc3.bias",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    }
    assert expected <= keys
    assert not any("gamma" in key for key in keys)
    prefixes = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.", "projector.", "language_model.")
    assert all(key.startswith(prefixes) for key in keys)
    # SigLIP has no LayerScale; DINOv2 has two per block.
    assert not any("fused_featurizer" in key and "scale_factor" in key for key in keys)
    assert sum("scale_factor" in key for key in keys) == 4


def test_default_config_is_openvla_7b_shapes():
    with torch.device("meta"):
        model = OpenVLAForActionPrediction(OpenVLAConfig())
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes["projector.fc1.weight"] == (8704, 2176)
    assert shapes["projector.fc2.weight"] == (4096, 8704)
    assert shapes["projector.fc3.weight"] == (4096, 4096)
    assert shapes["language_model.model.embed_tokens.weight"] == (32064, 4096)
    assert shapes["language_model.lm_head.weight"] == (32064, 4096)
    assert shapes["vision_backbone.featurizer.blocks.23.ls1.scale_factor"] == (1024,)
    assert shapes["vision_backbone.featurizer.pos_embed"] == (1, 256, 1024)
    assert shapes["vision_backbone.fused_featurizer.pos_embed"] == (1, 256, 1152)
    assert (
        sum(name.startswith("language_model.model.layers.") and name.endswith("q_proj.weight") for name in shapes)
        == 32
    )
    space = model.action_space
    assert (space.first_token_id, space.n_bins, space.descending, space.action_dim) == (31744, 256, True, 7)


def test_released_config_dict_loads_without_remote_code():
    # The fields a released openvla-7b config.json carries (trimmed), including its remote-code leftovers.
    config = AutoConfig.for_model(
        "openvla",
        vision_backbone_id="dinosiglip-vit-so-224px",
        arch_specifier="no-align+fused-gelu-mlp",
        auto_map={"AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        hf_llm_id="meta-llama/Llama-2-7b-hf",
        text_config={"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000},
        norm_stats={"bridge_orig": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}},
    )
    assert isinstance(config, OpenVLAConfig)
    assert config.use_fused_vision_backbone and config.image_sizes == [224, 224]
    assert config.timm_model_ids[1] == "vit_so400m_patch14_siglip_224"


def test_save_load_round_trip_and_auto_classes(ar, ar_path, tmp_path):
    model, processor = ar
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    ids = random_action_ids(model, 2)
    with torch.no_grad():
        before = model.action_logits(inputs, ids)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = OpenVLAForActionPrediction.from_pretrained(tmp_path).eval()
    reloaded_inputs = OpenVLAProcessor.from_pretrained(tmp_path)(images=images(2), text=INSTRUCTIONS[:2])
    with torch.no_grad():
        assert torch.equal(reloaded.action_logits(reloaded_inputs, ids), before)

    assert isinstance(AutoConfig.from_pretrained(ar_path), OpenVLAConfig)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(ar_path), OpenVLAForActionPrediction)
    assert isinstance(load_vla(ar_path), OpenVLAForActionPrediction)
    assert isinstance(AutoProcessor.from_pretrained(ar_path), OpenVLAProcessor)


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------


def test_shapes_of_both_modes(model_and_processor):
    model, processor = model_and_processor
    space = model.action_space
    assert space.num_action_tokens == 14 and space.unnorm_key == "libero"
    inputs = processor(images=images(3), text=INSTRUCTIONS, return_tensors="pt")
    logits = model.action_logits(inputs, random_action_ids(model, 3))
    assert logits.shape == (3, 14, 256)
    token_ids, log_probs, actions = model.sample_actions(inputs, temperature=1.0)
    assert token_ids.shape == (3, 14) and token_ids.dtype == torch.long
    assert log_probs.shape == (3, 14) and log_probs.dtype == torch.float32 and bool((log_probs <= 0).all())
    assert actions.shape == (3, 2, 7) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)  # identity statistics: the decoded bin centres themselves
    np.testing.assert_allclose(
        actions.reshape(3, 14), model.config.action_tokenizer().decode(token_ids.numpy()), atol=1e-6
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_autoregressive_sampling_with_cache_matches_teacher_forcing(ar, temperature):
    model, processor = ar
    inputs = processor(images=images(3), text=INSTRUCTIONS, return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    token_ids, log_probs, _ = model.sample_actions(inputs, temperature=temperature, generator=generator)
    with torch.no_grad():
        logits = model.action_logits(inputs, token_ids)
    columns = token_ids - model.action_space.first_token_id
    expected = torch.log_softmax(logits / temperature, -1).gather(-1, columns[..., None])[..., 0]
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)


def test_parallel_logits_ignore_action_ids_and_autoregressive_logits_are_causal(ar, parallel):
    model, processor = parallel
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    with torch.no_grad():
        a = model.action_logits(inputs, random_action_ids(model, 2, seed=0))
        b = model.action_logits(inputs, random_action_ids(model, 2, seed=1))
        assert torch.equal(a, b)
        assert torch.equal(model(**inputs).action_logits, a)

    model, processor = ar
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    ids = random_action_ids(model, 2)
    changed = ids.clone()
    changed[:, 5] = model.action_space.first_token_id + (ids[:, 5] - model.action_space.first_token_id + 7) % 256
    with torch.no_grad():
        a, b = model.action_logits(inputs, ids), model.action_logits(inputs, changed)
    assert torch.equal(a[:, :6], b[:, :6])  # token 5 only conditions the tokens after it
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_action_logits_are_the_lm_logits_of_the_action_columns(ar_path, ar):
    model, processor = ar
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    ids = random_action_ids(model, 2)
    first = model.action_space.first_token_id
    with torch.no_grad():
        prompt_logits = model(**inputs).logits  # autoregressive, no action ids: the VLM's full-vocabulary logits
        action_logits = model.action_logits(inputs, ids)
    assert prompt_logits.shape[-1] == model.config.text_config.vocab_size
    # The first action token is read at the last prompt position.
    torch.testing.assert_close(action_logits[:, 0], prompt_logits[:, -1, first : first + 256], atol=1e-5, rtol=0)

    # Added-token layout: ascending ids from `first_action_token_id`.
    config = OpenVLAConfig.from_pretrained(ar_path)
    config.first_action_token_id = 3
    added = OpenVLAForActionPrediction(config).eval()
    space = added.action_space
    assert (space.first_token_id, space.descending) == (3, False)
    with torch.no_grad():
        logits = added.action_logits(inputs, ids - first + 3)
        torch.testing.assert_close(logits[:, 0], added(**inputs).logits[:, -1, 3:259], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not action tokens"):
        added.action_logits(inputs, ids)


def _logits_with_last_position_perturbed(model, inputs, ids):
    """Action logits when the first decoder layer's output at the last sequence position is shifted."""

    def shift_last_position(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += 1.0
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.language_model.model.layers[0].register_forward_hook(shift_last_position)
    try:
        with torch.no_grad():
            return model.action_logits(inputs, ids)
    finally:
        handle.remove()


def test_parallel_action_positions_attend_bidirectionally(ar, parallel):
    # The last position is the stop token (parallel) or the input of the last action token (autoregressive).
    for (model, processor), bidirectional in ((parallel, True), (ar, False)):
        inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
        ids = random_action_ids(model, 2)
        with torch.no_grad():
            clean = model.action_logits(inputs, ids)
        perturbed = _logits_with_last_position_perturbed(model, inputs, ids)
        earlier_changed = not torch.allclose(clean[:, :-1], perturbed[:, :-1], atol=1e-6)
        assert earlier_changed == bidirectional


def _prompt_hidden_states(model, inputs, segment_hook=None):
    """Final hidden states of the language model (every position) in a parallel forward pass; `segment_hook` may
    edit the input embeddings of the last `A + 1` positions (placeholders and stop token) in place."""
    captured = {}
    language_model = model.language_model.model

    def pre_hook(module, args, kwargs):
        if segment_hook is not None:
            embeds = kwargs["inputs_embeds"].clone()
            segment_hook(embeds[:, -(model.config.num_action_tokens + 1) :])
            kwargs["inputs_embeds"] = embeds
        return args, kwargs

    def hook(module, args, kwargs, output):
        captured["embeds"] = kwargs["inputs_embeds"]
        captured["hidden"] = output.last_hidden_state

    handles = [
        language_model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        language_model.register_forward_hook(hook, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            logits = model(**inputs).action_logits
    finally:
        for handle in handles:
            handle.remove()
    return captured["embeds"], captured["hidden"], logits


def test_parallel_sequence_is_placeholders_then_stop_token_with_published_readout(parallel):
    # OpenVLA-OFT (SimpleVLA-RL `generate_action_verl`): prompt, A placeholders with zeroed embeddings, then `</s>`;
    # the logits of action token j are read at the last prompt token (j = 0) and at placeholder j - 1.
    model, processor = parallel
    inputs = processor(images=images(1), text=INSTRUCTIONS[:1], return_tensors="pt")
    num_tokens = model.config.num_action_tokens
    assert model.config.resolved_stop_token_id == processor.tokenizer.eos_token_id == 2
    embeds, hidden, logits = _prompt_hidden_states(model, inputs)
    num_visual = embeds.shape[1] - inputs["input_ids"].shape[1] - num_tokens - 1
    assert num_visual == model.config.num_images * (64 // 8) ** 2
    stop_embedding = model.get_input_embeddings().weight[2]
    assert torch.equal(embeds[0, -1], stop_embedding)
    assert not bool(embeds[0, -num_tokens - 1 : -1].any())  # zeroed placeholders
    assert embeds[0, -num_tokens - 2].abs().sum() > 0  # the last prompt token (the processor's prompt end)
    start = embeds.shape[1] - num_tokens - 1
    torch.testing.assert_close(logits, model._action_head(hidden[:, start - 1 : start - 1 + num_tokens]))
    assert logits.shape == (1, num_tokens, 256)


def test_parallel_attention_is_fully_bidirectional(parallel):
    # OFT's patched Llama SDPA attention (`is_causal=False`): prompt and image positions see the placeholders and
    # the stop token too, so changing the stop token's input changes the hidden state of `<s>` and every logit.
    model, processor = parallel
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    _, clean, clean_logits = _prompt_hidden_states(model, inputs)

    def shift_stop(segment):
        segment[:, -1] += 1.0

    _, shifted, shifted_logits = _prompt_hidden_states(model, inputs, shift_stop)
    first_real = (inputs["attention_mask"] == 0).sum(1)  # <s> of each left-padded row
    for row, bos in enumerate(first_real.tolist()):
        assert not torch.allclose(clean[row, bos], shifted[row, bos], atol=1e-6)  # <s> sees the stop token
    assert not torch.allclose(clean_logits[:, 0], shifted_logits[:, 0], atol=1e-6)

    # And the same from the placeholders: they are attended by the prompt although their embeddings are zero.
    def fill_placeholders(segment):
        segment[:, :-1] += 0.5

    _, _, placeholder_logits = _prompt_hidden_states(model, inputs, fill_placeholders)
    assert not torch.allclose(clean_logits[:, 0], placeholder_logits[:, 0], atol=1e-6)

    # The attention mask: every real key is visible to every query, pads to none (but its own position).
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    bias = model._attention_bias(valid, 4, torch.float32, causal=False)[:, 0]
    assert bool((bias[1] == 0).all())
    assert bool((bias[0][:, 1:] == 0).all()) and bool((bias[0][1:, 0] < 0).all()) and bias[0][0, 0] == 0
    causal = model._attention_bias(valid, 4, torch.float32)[:, 0]
    upper = torch.ones(4, 4, dtype=torch.bool).triu(1)
    assert bool((causal[1][upper] < 0).all()) and bool((causal[1][~upper] == 0).all())


def test_parallel_stop_token_id_is_configurable(parallel_path):
    config = OpenVLAConfig.from_pretrained(parallel_path)
    assert config.stop_token_id is None and config.resolved_stop_token_id == config.text_config.eos_token_id
    config.stop_token_id = 1
    assert config.resolved_stop_token_id == 1
    with pytest.raises(ValueError, match="stop token"):
        OpenVLAConfig(decoding="parallel", stop_token_id=10**6)
    model, processor = load(parallel_path)
    inputs = processor(images=images(1), text=INSTRUCTIONS[:1], return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs).action_logits
        model.config.stop_token_id = 1
        try:
            changed = model(**inputs).action_logits
        finally:
            model.config.stop_token_id = None
    assert not torch.allclose(reference, changed, atol=1e-6)


def _oft_parity_model() -> OpenVLAForActionPrediction:
    """The native model of `fixtures/oft_parity.npz` (see `fixtures/make_oft_parity_fixture.py`): two tiny timm ViTs,
    a 2-layer Llama with a 320 + 64 vocabulary, two images, proprio, LIBERO's 7 x 8 action tokens."""
    vit = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}
    config = OpenVLAConfig(
        timm_model_ids=["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        image_sizes=[32, 32],
        timm_override_act_layers=[None, None],
        timm_model_kwargs=[vit, vit],
        text_config=tiny_llama_config(vocab_size=384, pad_token_id=320),
        pad_token_id=320,
        pad_to_multiple_of=64,
        norm_stats={"libero": make_identity_stats()},
        unnorm_key="libero",
        action_dim=7,
        chunk_size=8,
        decoding="parallel",
        use_proprio=True,
        proprio_dim=8,
        num_images=2,
    )
    return OpenVLAForActionPrediction(config).eval()


def test_parallel_decoding_matches_the_published_openvla_oft_code():
    # Weights, inputs and action logits written by SimpleVLA-RL's OpenVLA-OFT modeling file on the
    # transformers-openvla-oft Llama (bidirectional SDPA): its training `forward` on an unpadded batch and its
    # rollout `generate_action_verl` (greedy) on a left-padded one.
    data = np.load(Path(__file__).parent / "fixtures" / "oft_parity.npz")
    model = _oft_parity_model()
    prefix = "weight/"
    weights = {key[len(prefix) :]: torch.from_numpy(data[key]) for key in data.files if key.startswith(prefix)}
    model.load_state_dict(weights, strict=True)
    pixel_values, proprio = torch.from_numpy(data["pixel_values"]), torch.from_numpy(data["proprio"])
    with torch.no_grad():
        unpadded = model(
            input_ids=torch.from_numpy(data["forward_input_ids"]), pixel_values=pixel_values, proprio=proprio
        )
        padded = model(
            input_ids=torch.from_numpy(data["generate_input_ids"]),
            attention_mask=torch.from_numpy(data["generate_attention_mask"]),
            pixel_values=pixel_values,
            proprio=proprio,
        )
    assert unpadded.action_logits.shape == (2, 56, 256)
    torch.testing.assert_close(unpadded.action_logits, torch.from_numpy(data["expected_forward"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(padded.action_logits, torch.from_numpy(data["expected_generate"]), atol=1e-4, rtol=0)
    # The published greedy ids: argmax over logits[..., -256-64:-64], plus vocab_size - 256 (= the first action id).
    first = model.action_space.first_token_id
    assert first == 64
    assert torch.equal(padded.action_logits.argmax(-1) + first, torch.from_numpy(data["expected_generate_ids"]))


def test_batch_equals_single_with_left_padding(model_and_processor):
    model, processor = model_and_processor
    batch = processor(images=images(3), text=INSTRUCTIONS, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the instructions have different lengths
    ids = random_action_ids(model, 3)
    with torch.no_grad():
        batched = model.action_logits(batch, ids)
        for i in range(3):
            single = processor(images=images(3)[i], text=INSTRUCTIONS[i], return_tensors="pt")
            assert single["attention_mask"].all()
            torch.testing.assert_close(
                batched[i : i + 1], model.action_logits(single, ids[i : i + 1]), atol=1e-5, rtol=0
            )
    greedy_batch = model.sample_actions(batch, temperature=0)[0]
    greedy_single = model.sample_actions(processor(images=images(3)[1], text=INSTRUCTIONS[1]), temperature=0)[0]
    assert torch.equal(greedy_batch[1:2], greedy_single)


def test_greedy_is_deterministic_argmax(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    first, log_probs, actions = model.sample_actions(inputs, temperature=0)
    second, _, actions_again = model.sample_actions(inputs, temperature=0)
    assert torch.equal(first, second) and np.array_equal(actions, actions_again)
    with torch.no_grad():
        logits = model.action_logits(inputs, first)
    columns = first - model.action_space.first_token_id
    assert torch.equal(columns, logits.argmax(-1))
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1).amax(-1), atol=1e-5, rtol=0)


def test_generator_reproducibility(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")

    def draw(seed):
        return model.sample_actions(inputs, temperature=1.0, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_labels_give_the_action_cross_entropy(ar):
    model, processor = ar
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    labels = random_action_ids(model, 2)
    output = model(**inputs, labels=labels)
    columns = labels - model.action_space.first_token_id
    expected = torch.nn.functional.cross_entropy(output.action_logits.flatten(0, 1), columns.flatten())
    torch.testing.assert_close(output.loss, expected)
    masked = labels.clone()
    masked[:, 7:] = -100
    masked_loss = model(**inputs, action_token_ids=labels, labels=masked).loss
    torch.testing.assert_close(
        masked_loss,
        torch.nn.functional.cross_entropy(output.action_logits[:, :7].flatten(0, 1), columns[:, :7].flatten()),
    )


def test_gradients_reach_the_trainable_parts_only(parallel):
    model, processor = parallel
    model.zero_grad()
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    model(**inputs, labels=random_action_ids(model, 2)).loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    model.zero_grad()
    # Every trainable parameter gets a gradient (DDP needs no `find_unused_parameters`), except the embeddings of
    # tokens absent from these prompts, whose rows are zero but present.
    assert trainable - with_grad <= {"language_model.model.embed_tokens.weight"}
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in with_grad
    assert "projector.fc3.weight" in with_grad
    assert "vision_backbone.featurizer.blocks.1.attn.qkv.weight" not in trainable  # the unused last block


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(ar):
    model, processor = ar
    inputs = processor(images=images(2), text=INSTRUCTIONS[:2], return_tensors="pt")
    ids = random_action_ids(model, 2)
    with pytest.raises(ValueError, match="must have shape"):
        model.action_logits(inputs, ids[:, :7])
    with pytest.raises(ValueError, match="not action tokens"):
        model.action_logits(inputs, torch.full_like(ids, 5))
    right_padded = {**inputs, "attention_mask": inputs["attention_mask"].flip(1)}
    with pytest.raises(ValueError, match="left padding"):
        model.action_logits(right_padded, ids)
    with pytest.raises(ValueError, match="pixel_values"):
        model.action_logits({**inputs, "pixel_values": inputs["pixel_values"][:, :3]}, ids)

    stats = model.config.norm_stats["libero"]
    model.config.norm_stats, model.config.unnorm_key = {"libero_spatial": stats, "libero_goal": stats}, None
    try:
        with pytest.raises(ValueError, match="unnorm_key"):
            model.sample_actions(inputs)
        with pytest.raises(ValueError, match="not in the model's norm_stats"):
            model.sample_actions(inputs, unnorm_key="libero_10")
        assert model.sample_actions(inputs, unnorm_key="libero_goal")[2].shape == (2, 2, 7)
    finally:
        model.config.norm_stats, model.config.unnorm_key = {"libero": stats}, "libero"

    with pytest.raises(ValueError, match="decoding"):
        OpenVLAConfig(decoding="diffusion")
    with pytest.raises(ValueError, match="images"):
        processor(images=images(1), text=INSTRUCTIONS[:2])


# ----------------------------------------------------------------------------------------------------------------
# Processor and policy glue
# ----------------------------------------------------------------------------------------------------------------


def test_processor_prompt_padding_and_pixels(ar):
    _, processor = ar
    gray = np.full((128, 128, 3), 128, dtype=np.uint8)
    inputs = processor(images=[gray, gray], text=["Open The Drawer", INSTRUCTIONS[0]], return_tensors="pt")
    tokenizer = processor.tokenizer
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert mask[0, 0] == 0 and bool(mask[:, -1].all())
    assert bool((ids[mask == 0] == tokenizer.pad_token_id).all())
    assert bool((ids[:, -1] == processor.prompt_end_token_id).all())
    first = ids[0][mask[0].bool()].tolist()
    assert first[0] == tokenizer.bos_token_id
    decoded = tokenizer.decode(first[1:-1])
    assert decoded == "In: What action should the robot take to open the drawer?\nOut:"
    pixels = inputs["pixel_values"]
    assert pixels.shape == (2, 6, 64, 64)
    from_pil = processor(images=[Image.fromarray(gray)] * 2, text=["a", "b"], return_tensors="pt")["pixel_values"]
    assert torch.equal(from_pil, pixels)
    dino = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels[0, :3, 10, 10].numpy(), dino, atol=1e-5)
    np.testing.assert_allclose(pixels[0, 3:, 10, 10].numpy(), [(128 / 255 - 0.5) / 0.5] * 3, atol=1e-5)


def test_vla_policy_with_wrist_camera_and_proprio(tmp_path):
    proprio_stats = {"q01": [0.0] * 8, "q99": [2.0] * 8}
    stats = {"libero": {**make_identity_stats(), "proprio": proprio_stats}}
    path = make_tiny_openvla(
        tmp_path, decoding="parallel", chunk_size=1, use_proprio=True, num_images=2, norm_stats=stats
    )
    model, processor = load(path)
    policy = VLAPolicy(model, processor)
    assert isinstance(policy, ActionPolicy)
    assert policy.action_space == model.action_space
    observations = [
        {"image": image, "wrist_image": wrist, "proprio": np.full(8, 1.5, np.float32), "privileged_state": {}}
        for image, wrist in zip(images(2, seed=0), images(2, seed=1))
    ]
    inputs = policy.build_inputs(observations, INSTRUCTIONS[:2])
    assert inputs["pixel_values"].shape == (2, 12, 64, 64)
    torch.testing.assert_close(inputs["proprio"], torch.full((2, 8), 0.5))  # 2 * (1.5 - 0) / 2 - 1
    token_ids, log_probs, actions = policy.sample_actions(inputs, temperature=0)
    assert token_ids.shape == (2, 7) and actions.shape == (2, 1, 7)
    with torch.no_grad():
        torch.testing.assert_close(policy.action_logits(inputs, token_ids), model.action_logits(inputs, token_ids))
    # The wrist camera and the proprio state both condition the action distribution.
    with torch.no_grad():
        base = model.action_logits(inputs, token_ids)
        moved = model.action_logits({**inputs, "proprio": inputs["proprio"] + 0.5}, token_ids)
        swapped = model.action_logits({**inputs, "pixel_values": inputs["pixel_values"].roll(6, dims=1)}, token_ids)
    assert not torch.allclose(base, moved) and not torch.allclose(base, swapped)
    with pytest.raises(KeyError, match="wrist_image"):
        policy.build_inputs([{"image": images(1)[0], "proprio": np.zeros(8)}], INSTRUCTIONS[:1])
    with pytest.raises(ValueError, match="proprio"):
        model.action_logits({k: v for k, v in inputs.items() if k != "proprio"}, token_ids)


def make_identity_stats():
    from trl_vla import identity_norm_stats

    return identity_norm_stats(7)


def test_processor_takes_read_only_images_without_a_warning(ar_path):
    import warnings

    processor = OpenVLAProcessor.from_pretrained(ar_path)
    image = np.zeros((64, 64, 3), np.uint8)
    image.flags.writeable = False  # as `datasets` returns its image columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs = processor(images=[image], text=["pick up the bowl"])
    assert inputs["pixel_values"].shape[0] == 1 and torch.isfinite(inputs["pixel_values"]).all()
