"""VLAOPDTrainer on the real LIBERO simulator with a tiny OpenVLA student and the scripted expert as teacher."""

import json
import os
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch

from trl_vla import ActionTokenizer, VLAOPDConfig, VLAOPDTrainer, select_norm_stats
from trl_vla.envs.libero import make_prompts
from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
from trl_vla.teachers import ScriptedLiberoExpert
from trl_vla.teachers.scripted_libero import expert_action
from trl_vla.testing import make_tiny_openvla
from trl_vla.trainer.learning_curve import learning_curve_series


SUITE = "libero_object"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return make_tiny_openvla(str(tmp_path_factory.mktemp("student")), decoding="parallel", chunk_size=8, seed=0)


def _trainer(student_path, tmp_path, teacher=None, **overrides):
    model = OpenVLAForActionPrediction.from_pretrained(student_path)
    processor = OpenVLAProcessor.from_pretrained(student_path)
    if teacher is None:
        teacher = ScriptedLiberoExpert(SUITE, action_space=model.action_space)
    kwargs = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "max_steps": 2,
        "prompts_per_step": 2,
        "num_generations": 1,
        "num_envs": 1,
        "max_episode_steps": 24,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "num_videos": 1,
        "seed": 0,
    }
    kwargs.update(overrides)
    return VLAOPDTrainer(
        model=model,
        teacher_model=teacher,
        args=VLAOPDConfig(**kwargs),
        train_dataset=make_prompts(SUITE, task_ids=[0], init_state_ids=[0, 1]),
        eval_dataset=make_prompts(SUITE, task_ids=[0], init_state_ids=[0]),
        processing_class=processor,
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad input fails before any rollout, with a message that says what to do
# ---------------------------------------------------------------------------------------------------------------


def test_prompts_without_required_columns(student_path, tmp_path):
    model = OpenVLAForActionPrediction.from_pretrained(student_path)
    with pytest.raises(ValueError, match="lacks the prompt columns \\['init_state_id'"):
        VLAOPDTrainer(
            model=model,
            teacher_model=ScriptedLiberoExpert(SUITE, action_space=model.action_space),
            args=VLAOPDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, prompts_per_step=1),
            train_dataset=datasets.Dataset.from_dict({"suite": [SUITE], "task_id": [0], "instruction": ["x"]}),
            processing_class=OpenVLAProcessor.from_pretrained(student_path),
        )


def test_fewer_prompts_than_one_round(student_path, tmp_path):
    with pytest.raises(ValueError, match="`prompts_per_step` \\(4\\) exceeds the 2 prompts"):
        _trainer(student_path, tmp_path, prompts_per_step=4)


def test_mismatched_action_spaces_name_the_field(student_path, tmp_path):
    space = ActionTokenizer(vocab_size=32000).action_space(action_dim=7, chunk_size=1)
    teacher = ScriptedLiberoExpert(SUITE, action_space=space)
    with pytest.raises(ValueError, match="chunk_size: student=8, teacher=1"):
        _trainer(student_path, tmp_path, teacher=teacher)


def test_teacher_with_other_normalisation_statistics_is_refused(student_path, tmp_path):
    model = OpenVLAForActionPrediction.from_pretrained(student_path)
    _, stats = select_norm_stats(model.config.norm_stats, model.config.unnorm_key)
    other = {"action": {k: list(v) for k, v in stats["action"].items()}}
    other["action"]["q99"][2] = float(other["action"]["q99"][2]) * 0.5  # the same key, other demonstrations
    teacher = ScriptedLiberoExpert(SUITE, action_space=model.action_space, norm_stats=other)
    with pytest.raises(ValueError, match=r"statistics differ.*\n  dimension 2: student \[q01, q99\]"):
        _trainer(student_path, tmp_path, teacher=teacher)
    # Within the tolerance (a rounding of the same statistics) it trains.
    other["action"]["q99"][2] = float(stats["action"]["q99"][2]) * (1 + 1e-5)
    teacher = ScriptedLiberoExpert(SUITE, action_space=model.action_space, norm_stats=other)
    assert _trainer(student_path, tmp_path, teacher=teacher).teacher_policy is teacher


def test_missing_teacher_and_bad_config(student_path, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        VLAOPDTrainer(
            model=OpenVLAForActionPrediction.from_pretrained(student_path),
            args=VLAOPDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, prompts_per_step=1),
            train_dataset=make_prompts(SUITE, task_ids=[0], init_state_ids=[0]),
            processing_class=OpenVLAProcessor.from_pretrained(student_path),
        )
    with pytest.raises(ValueError, match="loss_type"):
        VLAOPDConfig(output_dir=str(tmp_path), loss_type="kl", use_cpu=True)
    with pytest.raises(ValueError, match="clip_epsilon"):
        VLAOPDConfig(output_dir=str(tmp_path), clip_epsilon=0.2, use_cpu=True)
    with pytest.raises(ValueError, match="rollout_temperature"):
        VLAOPDConfig(output_dir=str(tmp_path), rollout_temperature=-0.1, use_cpu=True)
    with pytest.raises(ValueError, match="biases the sampled estimator"):
        VLAOPDConfig(output_dir=str(tmp_path), loss_type="sampled_reverse_kl", replay_rounds=2, use_cpu=True)
    with pytest.raises(ValueError, match="num_minibatches"):
        VLAOPDConfig(output_dir=str(tmp_path), num_minibatches=0, use_cpu=True)
    with pytest.raises(ValueError, match="Unknown LIBERO suite .libero_nope.; choose one of"):
        make_prompts("libero_nope")


# ---------------------------------------------------------------------------------------------------------------
# End to end on the real simulator
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_changes_parameters_logs_metrics_and_writes_card(student_path, tmp_path):
    trainer = _trainer(student_path, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 0.5 * len(before)

    logs = {k for entry in trainer.state.log_history for k in entry}
    for key in (
        "loss", "reverse_kl", "entropy", "teacher_entropy", "argmax_agreement", "success_rate", "episode_length",
        "env_steps", "env_steps_per_second", "worker_faults", "time/rollout", "time/teacher", "time/update",
    ):  # fmt: skip
        assert key in logs, key
    kls = [e["reverse_kl"] for e in trainer.state.log_history if "reverse_kl" in e]
    assert all(kl >= 0 for kl in kls)
    env_steps = [e["env_steps"] for e in trainer.state.log_history if "env_steps" in e]
    assert env_steps == sorted(env_steps) and env_steps[-1] > 0

    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_success_rate"] <= 1.0 and metrics["eval_episodes"] == 1
    assert any(name.endswith(".mp4") for name in os.listdir(tmp_path / "out" / "videos"))

    trainer.save_model()
    trainer.create_model_card(model_name="tiny-opd")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "VLA-OPD" in card and "model-index" in card and "2603.26666" in card
    assert "ScriptedLiberoExpert" in card and "the student minimised `reverse_kl` per action token" in card
    # The one evaluation so far is the card's "before" row, with its Wilson interval and counts.
    assert re.search(r"\| before training \| \d+\.\d% \[\d+\.\d, \d+\.\d\] \([01]/1\) \|", card), card
    reloaded = OpenVLAForActionPrediction.from_pretrained(str(tmp_path / "out"))
    for name, param in reloaded.named_parameters():
        torch.testing.assert_close(param, trainer.model.state_dict()[name])


@pytest.mark.slow
def test_every_loss_type_on_one_round(student_path, tmp_path):
    """One rollout round, scored by the teacher, then each loss: finite, with a gradient, and consistent metrics."""
    from trl_vla.losses import LOSSES

    trainer = _trainer(student_path, tmp_path, num_iterations=2)
    trainer.model.train()
    (buffer,) = trainer._split_round(trainer._generate_and_score_completions(list(trainer.train_dataset)))
    assert buffer["teacher_logits"].shape == (len(buffer["observations"]), 56, 256)
    assert buffer["num_items_in_batch"].item() == 56 * len(buffer["observations"])
    values = {}
    for loss_type in LOSSES:
        trainer.loss_fn = LOSSES[loss_type]
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, buffer)
        loss.backward()
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads), loss_type
        values[loss_type] = loss.item()
    # the exact reverse KL is the logged KL metric; KLs are non-negative
    assert values["reverse_kl"] == pytest.approx(trainer._metrics["train"]["reverse_kl"][0], rel=1e-4)
    assert values["reverse_kl"] > 0 and values["forward_kl"] > 0 and values["generalized_jsd"] > 0


@pytest.mark.slow
def test_replay_minibatches_and_closed_loop_scoring(student_path, tmp_path):
    """Rounds aggregate the last `replay_rounds` rounds' scored steps; a round's buffer splits into minibatches whose
    token counts normalise each optimizer step; the scripted teacher labels the executed chunk closed-loop."""
    trainer = _trainer(student_path, tmp_path, replay_rounds=1, num_minibatches=2, gradient_accumulation_steps=2)
    assert trainer._env_kwargs()["record_step_states"] and trainer._steps_per_round == 4
    assert trainer.optimizer_steps_per_round == 2  # two minibatches, each accumulated over two micro-batches
    trainer.model.train()
    prompts = list(trainer.train_dataset)
    first = trainer._generate_and_score_completions(prompts)
    second = trainer._generate_and_score_completions(prompts)
    third = trainer._generate_and_score_completions(prompts)
    n1, n2 = len(first["observations"]), len(second["observations"])
    assert n2 == 2 * n1 and len(third["observations"]) == n2  # the current round and the one before it
    torch.testing.assert_close(second["teacher_logits"][:n1], first["teacher_logits"])
    assert not any(k in obs for obs in second["observations"] for k in ("privileged_state", "chunk_privileged_states"))
    assert trainer._metrics["train"]["replay_fraction"] == [0.0, 0.5, 0.5]

    micro_batches = trainer._split_round(second)
    assert len(micro_batches) == 4 and sum(len(b["action_mask"]) for b in micro_batches) == n2
    for index, batch in enumerate(micro_batches):
        pair = micro_batches[2 * (index // 2) : 2 * (index // 2) + 2]
        assert batch["num_items_in_batch"].item() == sum(b["action_mask"].sum().item() for b in pair)
    with pytest.raises(ValueError, match="fewer than its 4"):
        trainer._split_round({k: v[:3] for k, v in second.items()})

    # The targets are the expert's own actions at the states the chunks went through, not its plans.
    rollout = trainer._rollout(prompts[:1], 1.0, 1)
    observations = rollout.steps()["observations"]
    teacher = trainer.teacher_policy
    closed = teacher.action_logits(teacher.build_inputs(observations))
    planned = ScriptedLiberoExpert(SUITE, action_space=teacher.action_space, chunk_targets="plan")
    plans = planned.action_logits(planned.build_inputs(observations))
    assert torch.equal(closed[:, :7], plans[:, :7]) and not torch.equal(closed, plans)


@pytest.mark.slow
def test_lookahead_scoring_builds_simulating_envs(student_path, tmp_path):
    """A teacher with a `lookahead_policy` gets environments that simulate it ahead of every decision; its targets are
    the simulated chunks, and the student's inputs keep none of it."""
    model = OpenVLAForActionPrediction.from_pretrained(student_path)
    teacher = ScriptedLiberoExpert(SUITE, action_space=model.action_space, chunk_targets="lookahead")
    trainer = _trainer(student_path, tmp_path, teacher=teacher, max_episode_steps=16)
    kwargs = trainer._env_kwargs()
    assert kwargs["lookahead_policy"] is expert_action and kwargs["lookahead_steps"] == model.action_space.chunk_size
    assert "record_step_states" not in kwargs
    observations = trainer._rollout(list(trainer.train_dataset)[:1], 1.0, 1).steps()["observations"]
    targets = teacher.target_actions(teacher.build_inputs(observations))
    np.testing.assert_array_equal(targets, np.stack([obs["lookahead_actions"] for obs in observations]))
    np.testing.assert_allclose(targets[0, 0], expert_action(observations[0]["privileged_state"]), atol=1e-6)
    trainer.model.train()
    scored = trainer._generate_and_score_completions(list(trainer.train_dataset))
    assert not any(k in obs for obs in scored["observations"] for k in ("privileged_state", "lookahead_actions"))


_LOGGING_SCRIPT = """
import json, os, sys

def main(out, student):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage
    from trl_vla import VLAOPDConfig, VLAOPDTrainer
    from trl_vla.envs.libero import make_prompts
    from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
    from trl_vla.teachers import ScriptedLiberoExpert

    model = OpenVLAForActionPrediction.from_pretrained(student)
    args = VLAOPDConfig(
        output_dir=os.path.join(out, "run"), report_to=["tensorboard", "trackio"], project="trl-vla-test",
        run_name="opd", use_cpu=True, max_steps=2, logging_steps=1, prompts_per_step=1, num_generations=1,
        num_envs=1, max_episode_steps=16, save_strategy="no", num_videos=1, seed=0,
    )
    trainer = VLAOPDTrainer(
        model=model, teacher_model=ScriptedLiberoExpert("libero_object", action_space=model.action_space),
        args=args, train_dataset=make_prompts("libero_object", [0], [0]),
        eval_dataset=make_prompts("libero_object", [0], [1]),
        processing_class=OpenVLAProcessor.from_pretrained(student),
    )
    trainer.train()
    trainer.evaluate()
    trainer.create_model_card(model_name="tiny")
    trainer.close()
    logged = [h for h in trainer.state.log_history if "reverse_kl" in h]
    board = EventAccumulator(os.environ["TENSORBOARD_LOGGING_DIR"])
    board.Reload()
    logs = SQLiteStorage.get_logs("trl-vla-test", "opd")
    tracked = [r for r in logs if "train/reverse_kl" in r]
    media = sorted({k for r in logs for k, v in r.items() if isinstance(v, dict) and v.get("_type")})
    print("RESULT " + json.dumps({
        "logged": [[h["step"], h["reverse_kl"], h["success_rate"]] for h in logged],
        "tensorboard": [[e.step, e.value] for e in board.Scalars("train/reverse_kl")],
        "tensorboard_success": [e.value for e in board.Scalars("train/success_rate")],
        "trackio": [[r["train/global_step"], r["train/reverse_kl"], r["train/success_rate"]] for r in tracked],
        "tensorboard_images": sorted(board.Tags()["images"]),
        "trackio_media": media,
    }))

if __name__ == "__main__":
    main(*sys.argv[1:])
"""


@pytest.mark.slow
def test_metrics_reach_tensorboard_and_trackio_offline(student_path, tmp_path):
    """`report_to=["tensorboard", "trackio"]` runs offline and both back-ends hold the trainer's own metrics, its
    evaluation video and its learning curve."""
    script = tmp_path / "log_run.py"
    script.write_text(_LOGGING_SCRIPT)
    env = {
        **os.environ,
        "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb"),
        "TRACKIO_DIR": str(tmp_path / "trackio"),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), student_path],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    values = json.loads(line[len("RESULT ") :])
    logged = values["logged"]
    assert [step for step, _, _ in logged] == [1, 2] and all(kl > 0 for _, kl, _ in logged)
    for (step, kl, success), (board_step, board_kl), (track_step, track_kl, track_success) in zip(
        logged, values["tensorboard"], values["trackio"], strict=True
    ):
        assert board_step == track_step == step
        assert board_kl == pytest.approx(kl, rel=1e-6) and track_kl == pytest.approx(kl, rel=1e-6)
        assert track_success == success
    assert values["tensorboard_success"] == [success for _, _, success in logged]
    # The evaluation video (a strip of frames on tensorboard) and the learning curve reach both back-ends.
    assert values["tensorboard_images"] == ["eval/video_0", "learning_curve"]
    assert values["trackio_media"] == ["eval/video_0", "learning_curve"]


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_ends(student_path, tmp_path):
    """Weights and reports: a run resumed from a checkpoint logs the same cumulative env steps, keeps the evaluation
    history (the learning curve's points, the card's before/after rows) and writes the same card rows."""

    def run(trainer, **train_kwargs):
        trainer.evaluate()  # "before", as examples/opd_libero.py does
        trainer.train(**train_kwargs)
        trainer.evaluate()
        trainer.create_model_card(model_name="tiny")
        return trainer

    full = run(_trainer(student_path, tmp_path / "full", max_steps=2))
    first = _trainer(student_path, tmp_path / "resumed", max_steps=2, save_strategy="steps", save_steps=1)
    first.evaluate()
    first.train()  # writes checkpoint-1 and checkpoint-2; resume from the first one
    resumed = _trainer(student_path, tmp_path / "resumed", max_steps=2, save_strategy="no")
    run(resumed, resume_from_checkpoint=str(tmp_path / "resumed" / "out" / "checkpoint-1"))
    for (name, p_full), p_resumed in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p_full, p_resumed, msg=name)

    def env_step_series(trainer):
        return [(e["step"], e["env_steps"]) for e in trainer.state.log_history if "env_steps" in e]

    assert env_step_series(resumed) == env_step_series(full) and resumed.env_steps == full.env_steps > 0
    keys = ("step", "env_steps", "eval_success_rate", "eval_episodes")
    assert [[e[k] for k in keys] for e in resumed.eval_history] == [[e[k] for k in keys] for e in full.eval_history]
    assert len(full.eval_history) == 2
    curves = [learning_curve_series(t.state.log_history, eval_history=t.eval_history) for t in (full, resumed)]
    assert curves[0].keys() == curves[1].keys() and "eval_success_rate" in curves[0]
    for key, points in curves[0].items():
        assert [x for x, _ in curves[1][key]] == [x for x, _ in points], key
        assert [v for _, v in curves[1][key]] == pytest.approx([v for _, v in points], rel=1e-4), key

    def card_rows(path):
        text = (path / "out" / "README.md").read_text()
        return [line for line in text.splitlines() if line.startswith(("| Environment steps", "| before", "| after"))]

    assert card_rows(tmp_path / "resumed") == card_rows(tmp_path / "full")
    assert f"| Environment steps | {full.env_steps} |" in card_rows(tmp_path / "full")


@pytest.mark.slow
def test_two_process_launch_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(REPO, "accelerate_configs", "cpu.yaml"), os.path.join(REPO, "examples", "opd_libero.py"),
        "--output_dir", str(out), "--max_steps", "1", "--prompts_per_step", "2", "--num_generations", "1",
        "--num_envs", "0", "--max_episode_steps", "16", "--sft_demos_per_task", "0",
        "--init_state_ids", "0", "1", "--eval_init_state_ids", "0", "1", "--num_videos", "0",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "student after OPD" in result.stdout
    assert (out / "README.md").exists() and (out / "model.safetensors").exists()
