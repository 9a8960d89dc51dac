"""The learning curve of the model cards: points at the env steps they were measured at, and the PNG."""

from trl_vla.trainer.learning_curve import learning_curve_series, plot_learning_curve


LOG_HISTORY = [
    {"loss": 1.0, "reverse_kl": 9.0, "entropy": 3.0, "success_rate": 0.0, "env_steps": 100.0, "step": 1},
    {"loss": 0.8, "reverse_kl": 7.0, "entropy": 2.5, "step": 2},  # an optimizer step of the same round
    {"loss": 0.5, "reverse_kl": 5.0, "entropy": 2.0, "success_rate": 0.5, "env_steps": 200.0, "step": 3},
    {"eval_success_rate": 0.75, "step": 3},  # evaluate() after training: no env steps of its own
    {"train_runtime": 10.0, "step": 3},
]
# A rollout trainer's eval_history: the evaluation before train() is not in the log history any more.
EVAL_HISTORY = [
    {"step": 0, "env_steps": 0.0, "eval_success_rate": 0.25},
    {"step": 3, "env_steps": 200.0, "eval_success_rate": 0.75},
]


def test_series_use_the_env_steps_each_point_was_measured_at():
    series = learning_curve_series(LOG_HISTORY)
    assert series["reverse_kl"] == [(100.0, 9.0), (100.0, 7.0), (200.0, 5.0)]
    assert series["success_rate"] == [(100.0, 0.0), (200.0, 0.5)]
    assert series["eval_success_rate"] == [(200.0, 0.75)]
    # With the trainer's eval history, the evaluation before training sits at 0 env steps.
    series = learning_curve_series(LOG_HISTORY, eval_history=EVAL_HISTORY)
    assert series["eval_success_rate"] == [(0.0, 0.25), (200.0, 0.75)]
    assert series["entropy"] == [(100.0, 3.0), (100.0, 2.5), (200.0, 2.0)]


def test_series_fall_back_to_the_optimizer_step():
    series = learning_curve_series([{"entropy": 2.0, "step": 1}, {"entropy": 1.0, "step": 2}])
    assert series["entropy"] == [(1, 2.0), (2, 1.0)]


def test_plot_writes_a_png_only_when_there_is_something_to_plot(tmp_path):
    path = tmp_path / "curve.png"
    assert plot_learning_curve(LOG_HISTORY, str(path), eval_history=EVAL_HISTORY)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.png"
    assert not plot_learning_curve([{"train_runtime": 1.0}], str(empty)) and not empty.exists()
