"""PhaseClock: exclusive time per phase, nested calls charged to the innermost phase (on a fake clock)."""

import pytest

from trl_vla.envs import phase_clock
from trl_vla.envs.phase_clock import PhaseClock


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(phase_clock.time, "perf_counter", lambda: now[0])

    def advance(seconds):
        now[0] += seconds

    return PhaseClock(), advance


def test_nested_phases_are_charged_to_the_innermost(clock):
    clock, advance = clock

    def physics():
        advance(2.0)

    physics = clock.timed("physics", physics)

    def controller():
        advance(1.0)
        physics()  # the controller's own forward pass: physics, not controller
        advance(0.5)

    controller = clock.timed("controller", controller)
    advance(10.0)  # outside every phase: not counted
    with clock.phase("step"):
        advance(0.25)
        controller()
        physics()
    assert clock.take() == {"step": 0.25, "controller": 1.5, "physics": 4.0}
    assert clock.take() == {}  # counting starts afresh


def test_take_inside_a_running_phase_and_errors_leave_the_phase(clock):
    clock, advance = clock
    with clock.phase("step"):
        advance(1.0)
        assert clock.take() == {"step": 1.0}
        advance(2.0)
    assert clock.take() == {"step": 2.0}

    def broken():
        advance(3.0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        clock.timed("render", broken)()
    advance(5.0)  # the failed phase was left: this is not charged to it
    assert clock.take() == {"render": 3.0}
