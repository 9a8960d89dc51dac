"""OpenVLA against the published code and the released checkpoint layouts.

* Autoregressive parity: weights, inputs and outputs written by the published OpenVLA Hugging Face code
  (`fixtures/make_openvla_parity_fixture.py`) load strictly into the native classes and give the same logits, the
  same greedy action tokens and the same actions.
* Released layouts: folders laid out as `openvla/openvla-7b` and the OpenVLA-OFT checkpoints that SimpleVLA-RL
  trains from (`trl_vla.testing.released_layout`) load whole with the Auto classes, without `trust_remote_code`.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from trl_vla.action_tokenizer import identity_norm_stats
from trl_vla.models import OpenVLAConfig, OpenVLAForActionPrediction, OpenVLAProcessor
from trl_vla.models.openvla import OpenVLAImageProcessor
from trl_vla.testing import make_released_openvla, tiny_llama_config
from trl_vla.testing.released_layout import RELEASED_DINO_MEAN, RELEASED_DINO_STD


torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"


# -------------------------------------------------------------------------------------------------------------------
# Parity with the published OpenVLA code (autoregressive decoding)
# -------------------------------------------------------------------------------------------------------------------


def _openvla_parity_model(data) -> OpenVLAForActionPrediction:
    """The native model of `fixtures/openvla_parity.npz`: openvla-7b's fused DINOv2 + SigLIP timm ViTs at 32 px
    (8-pixel patches), the fused projector and a 2-layer Llama with Llama-2's 32000 + 64 vocabulary."""
    vit = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}
    stats = {
        "q01": data["norm_stats_q01"].tolist(),
        "q99": data["norm_stats_q99"].tolist(),
        "mask": data["norm_stats_mask"].tolist(),
    }
    config = OpenVLAConfig(
        vision_backbone_id="dinosiglip-vit-so-224px",
        image_sizes=[32, 32],
        timm_model_kwargs=[vit, vit],
        text_config=tiny_llama_config(vocab_size=32064, pad_token_id=32000),
        norm_stats={"bridge_orig": {"action": stats}},
        unnorm_key="bridge_orig",
    )
    model = OpenVLAForActionPrediction(config).eval()
    weights = {}
    for key in data.files:
        if not key.startswith("weight/"):
            continue
        name = key[len("weight/") :]
        values = torch.from_numpy(data[key])
        if f"rows/{name}" in data.files:  # stored sparsely: only these rows are non-zero
            full = torch.zeros_like(model.state_dict()[name])
            full[torch.from_numpy(data[f"rows/{name}"])] = values
            values = full
        weights[name] = values
    model.load_state_dict(weights, strict=True)
    return model


def _left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = r
        mask[i, length - len(r) :] = 1
    return ids, mask


def test_autoregressive_decoding_matches_the_published_openvla_code():
    # Weights, inputs and outputs of openvla/openvla's `prismatic/extern/hf` code (transformers 4.40.1, SDPA): its
    # teacher-forced `forward` on a right-padded batch and its `predict_action` (greedy, batch size 1).
    data = np.load(FIXTURES / "openvla_parity.npz")
    model = _openvla_parity_model(data)
    space = model.action_space
    assert (space.first_token_id, space.n_bins) == (31744, 256)  # Llama-2's last 256 ids, as openvla-7b

    # The published `PrismaticImageProcessor` (resize-naive, bicubic): identical at the model's resolution.
    image_processor = OpenVLAImageProcessor(image_size=32)
    pixel_values = torch.from_numpy(data["pixel_values"])
    torch.testing.assert_close(image_processor(list(data["images"]))["pixel_values"], pixel_values, atol=1e-6, rtol=0)
    # Downsizing: PIL's bicubic filter there, torchvision's antialiased bicubic on tensors here (about 1/255 apart).
    resized = image_processor(list(data["large_images"]))["pixel_values"]
    large = torch.from_numpy(data["large_pixel_values"])
    assert (resized - large).abs().mean() < 1e-3 and (resized - large).abs().max() < 0.04

    # `predict_action` appends the empty token 29871 after "Out:" (as at training time), as `OpenVLAProcessor` does
    # with `prompt_end_token_id=29871`; the native model takes a left-padded batch where the published one took one
    # prompt at a time (and a right-padded batch for training).
    prompts = [torch.from_numpy(data["prompt_0"]), torch.from_numpy(data["prompt_1"])]
    rows = [torch.cat([p, torch.tensor([29871])]) for p in prompts]
    input_ids, attention_mask = _left_pad(rows, 32000)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    # Teacher forcing: the action tokens of the published training batch (`<s> prompt 29871 a_1..a_7 </s> <PAD>..`).
    forward_ids = torch.from_numpy(data["forward_input_ids"])
    taught = torch.stack([forward_ids[i, len(r) : len(r) + 7] for i, r in enumerate(rows)])
    assert bool(((taught >= 31744) & (taught < 32000)).all())
    with torch.no_grad():
        logits = model.action_logits(inputs, taught)
    torch.testing.assert_close(logits, torch.from_numpy(data["expected_forward"]), atol=1e-4, rtol=0)

    # Greedy decoding (KV cache) gives the published tokens and actions; their teacher-forced logits are the
    # published per-step logits.
    expected_ids = torch.from_numpy(data["expected_generate_ids"])
    token_ids, _, actions = model.sample_actions(inputs, temperature=0)
    assert torch.equal(token_ids, expected_ids)
    np.testing.assert_allclose(actions[:, 0], data["expected_actions"], atol=1e-6, rtol=0)
    with torch.no_grad():
        logits = model.action_logits(inputs, expected_ids)
    torch.testing.assert_close(logits, torch.from_numpy(data["expected_generate"]), atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------------------------------------
# Released checkpoint layouts (openvla/openvla-7b, OpenVLA-OFT as SimpleVLA-RL trains from it)
# -------------------------------------------------------------------------------------------------------------------


def _load_released(path, **kwargs):
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True, **kwargs)
    return model.eval(), info


def test_released_openvla_7b_layout_loads_whole_without_remote_code(tmp_path):
    path = make_released_openvla(tmp_path / "openvla-7b", dataset_statistics=False)
    files = set(os.listdir(path))
    assert {"config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json"} <= files
    assert {"model.safetensors.index.json", "model-00001-of-00004.safetensors", "modeling_prismatic.py"} <= files
    released = json.loads((Path(path) / "config.json").read_text())
    assert released["auto_map"]["AutoModelForVision2Seq"] == "modeling_prismatic.OpenVLAForActionPrediction"
    assert "decoding" not in released and "unnorm_key" not in released

    # The folder's remote-code files raise when imported: none of them runs.
    config = AutoConfig.from_pretrained(path)
    assert type(config) is OpenVLAConfig and config.decoding == "autoregressive"
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor) is OpenVLAProcessor and type(processor.image_processor) is OpenVLAImageProcessor
    model, info = _load_released(path)
    assert type(model) is OpenVLAForActionPrediction
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.dtype == torch.bfloat16  # the released `torch_dtype`
    assert list(model.config.norm_stats) == ["libero_10_no_noops"]

    # The published processor's settings: `input_sizes`, the applied (bfloat16-rounded) `tvf_normalize_params`,
    # and `predict_action`'s empty token "▁" after "Out:".
    image_processor = processor.image_processor
    assert image_processor.image_size == 32
    assert image_processor.means == [RELEASED_DINO_MEAN, [0.5] * 3] and image_processor.stds[0] == RELEASED_DINO_STD
    end = processor.tokenizer.convert_tokens_to_ids("\u2581")
    assert processor.prompt_end_token_id == end != processor.tokenizer.unk_token_id
    rng = np.random.default_rng(0)
    inputs = processor(
        images=[rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)],
        text=["open the top drawer", "put the bowl on the stove"],
    )
    assert bool((inputs["input_ids"][:, -1] == end).all())
    tokens, _, actions = model.sample_actions(inputs, temperature=0)
    assert tokens.shape == (2, 7) and actions.shape == (2, 1, 7)

    # Saved again, it is a native checkpoint and loads the same.
    model.save_pretrained(tmp_path / "native")
    processor.save_pretrained(tmp_path / "native")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "native").eval()
    assert torch.equal(again.sample_actions(inputs, temperature=0)[0], tokens)
    assert AutoProcessor.from_pretrained(tmp_path / "native").prompt_end_token_id == end


def test_norm_stats_come_from_dataset_statistics_json(tmp_path):
    stats = {"libero_spatial_no_noops": identity_norm_stats()}
    stats["libero_spatial_no_noops"]["action"]["q99"] = [0.5] * 7
    path = make_released_openvla(tmp_path / "finetuned", norm_stats=stats, stats_in_config=False)
    assert "norm_stats" not in json.loads((Path(path) / "config.json").read_text())
    model, _ = _load_released(path)
    assert model.config.norm_stats == stats
    _, _, actions = model.sample_actions(
        AutoProcessor.from_pretrained(path)(images=[np.zeros((32, 32, 3), np.uint8)], text=["open the drawer"]),
        temperature=0,
    )
    assert actions.shape == (1, 1, 7) and (actions[..., :6] <= 0.5).all()
    # As OpenVLA's loaders, the file replaces the config's statistics; an explicit argument wins over both.
    config = json.loads((Path(path) / "config.json").read_text())
    config["norm_stats"] = {"bridge_orig": identity_norm_stats()}
    (Path(path) / "config.json").write_text(json.dumps(config))
    assert AutoConfig.from_pretrained(path).norm_stats == stats
    assert OpenVLAConfig.from_pretrained(path).norm_stats == stats
    other = {"mine": identity_norm_stats()}
    assert AutoConfig.from_pretrained(path, norm_stats=other).norm_stats == other


def test_released_openvla_oft_layout_loads_with_the_oft_settings(tmp_path):
    # SimpleVLA-RL's LIBERO runs: the OFT checkpoint, discrete parallel decoding, one image, no proprio (the
    # `proprio_projector--*.pt` next to the weights is then unused, as there).
    path = make_released_openvla(tmp_path / "oft", proprio_projector=True, stats_in_config=False)
    model, info = _load_released(path, decoding="parallel", chunk_size=8, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert (model.config.decoding, model.config.num_action_tokens, model.dtype) == ("parallel", 56, torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    inputs = processor(images=[np.zeros((32, 32, 3), np.uint8)], text=["open the drawer"])
    tokens, _, actions = model.sample_actions(inputs, temperature=0)
    assert tokens.shape == (1, 56) and actions.shape == (1, 8, 7)

    # With proprio, the projector would have to come from that file, which this loader does not merge: refused.
    with pytest.raises(ValueError, match=r"proprio_projector--150000_checkpoint\.pt"):
        AutoModelForImageTextToText.from_pretrained(path, decoding="parallel", chunk_size=8, use_proprio=True)


def test_as_policy_passes_the_oft_settings_of_a_released_checkpoint(tmp_path):
    from trl_vla.models import as_policy

    path = make_released_openvla(tmp_path / "oft", stats_in_config=False)
    # `config.json` of a released OFT checkpoint does not say it decodes in parallel: as read, it is autoregressive
    assert as_policy(path).action_space.chunk_size == 1
    policy = as_policy(path, decoding="parallel", chunk_size=8)
    assert policy.action_space.chunk_size == 8 and policy.unwrapped_model.config.decoding == "parallel"
    assert not policy.unwrapped_model.training


def test_a_continuous_action_head_is_refused_naming_its_file(tmp_path):
    # moojink/openvla-oft's LIBERO checkpoints: an L1-regression `action_head--150000_checkpoint.pt` (and the
    # proprio projector) next to the VLA weights.
    path = make_released_openvla(tmp_path / "oft-l1", proprio_projector=True, action_head=True)
    for load in (AutoConfig.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        with pytest.raises(ValueError, match=r"action_head--150000_checkpoint\.pt.*continuous action head"):
            load(path)
    with pytest.raises(ValueError, match=r"action_head--150000_checkpoint\.pt"):
        OpenVLAForActionPrediction.from_pretrained(path)


def test_oft_settings_given_at_load_time_are_checked(tmp_path):
    path = make_released_openvla(tmp_path / "oft")
    with pytest.raises(ValueError, match="decoding"):
        AutoConfig.from_pretrained(path, decoding="paralel")
    with pytest.raises(ValueError, match="num_images"):
        OpenVLAConfig.from_pretrained(path, num_images=3)
    assert AutoConfig.from_pretrained(path, decoding="parallel", chunk_size=8).num_action_tokens == 56
