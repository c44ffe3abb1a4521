"""Sparsity schedules against values worked out by hand, and their LR-scheduler-like interface."""

from __future__ import annotations

import itertools
import math

import pytest

from prunekit.errors import CheckpointError, ConfigError, UnknownNameError
from prunekit.masks.schedules import (
    SCHEDULES,
    GradualCubic,
    Iterative,
    OneCycle,
    OneShot,
    make_schedule,
)


def cubic() -> GradualCubic:
    return GradualCubic(
        initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=100, frequency=10
    )


# ----------------------------------------------------------------------------- gradual cubic


def test_cubic_by_hand() -> None:
    # s_t = 0.9 + (0 - 0.9)(1 - t/100)^3
    s = cubic()
    assert s.get_sparsity(0) == pytest.approx(0.0)
    assert s.get_sparsity(10) == pytest.approx(0.9 - 0.9 * 0.729)  # 0.2439
    assert s.get_sparsity(20) == pytest.approx(0.9 - 0.9 * 0.512)  # 0.4392
    assert s.get_sparsity(50) == pytest.approx(0.9 - 0.9 * 0.125)  # 0.7875
    assert s.get_sparsity(100) == pytest.approx(0.9)
    assert s.get_sparsity(150) == pytest.approx(0.9)


def test_cubic_held_between_updates() -> None:
    s = cubic()
    for t in range(10, 20):
        assert s.get_sparsity(t) == s.get_sparsity(10)
    for t in range(90, 100):
        assert s.get_sparsity(t) == s.get_sparsity(90)
    assert s.get_sparsity(90) < 0.9


def test_cubic_initial_before_begin_and_offset() -> None:
    s = GradualCubic(
        initial_sparsity=0.2, final_sparsity=0.8, begin_step=50, end_step=150, frequency=25
    )
    assert s.get_sparsity(0) == 0.2
    assert s.get_sparsity(49) == 0.2
    assert s.get_sparsity(50) == pytest.approx(0.2)
    # t = 100: 0.8 + (0.2 - 0.8)(1 - 0.5)^3 = 0.8 - 0.6 / 8
    assert s.get_sparsity(100) == pytest.approx(0.725)
    assert s.get_sparsity(150) == pytest.approx(0.8)
    assert s.is_pruning_step(0)  # starts above zero: prune before the first step
    assert not s.is_pruning_step(50)  # the value at t0 is still s_i


def test_cubic_frequency_not_dividing_range_still_ends_on_final() -> None:
    s = GradualCubic(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=25, frequency=10
    )
    assert s.get_sparsity(24) == s.get_sparsity(20)
    assert s.get_sparsity(25) == 0.5
    assert s.pruning_steps(40) == [10, 20, 25]


def test_cubic_is_pruning_step() -> None:
    s = cubic()
    assert s.pruning_steps(200) == list(range(10, 101, 10))
    assert not s.is_pruning_step(0)  # 0 -> 0: nothing to do
    assert not s.is_pruning_step(15)


# ----------------------------------------------------------------------------- iterative


def test_iterative_twenty_percent_per_round() -> None:
    # 1 - 0.8^3 = 0.488, so 3 rounds to 0.488 is Frankle & Carbin's 20% per round
    s = Iterative(final_sparsity=0.488, rounds=3, every=5)
    assert s.per_round == pytest.approx(0.2)
    assert s.get_sparsity(0) == 0.0
    assert s.get_sparsity(4) == 0.0
    assert s.get_sparsity(5) == pytest.approx(0.2)
    assert s.get_sparsity(9) == pytest.approx(0.2)
    assert s.get_sparsity(10) == pytest.approx(0.36)  # 1 - 0.8^2
    assert s.get_sparsity(15) == 0.488  # exactly final after the last round
    assert s.get_sparsity(1000) == 0.488
    assert s.pruning_steps(100) == [5, 10, 15]


def test_iterative_p_by_hand() -> None:
    # (1 - p)^2 = 1 - 0.9 = 0.1  ->  p = 1 - sqrt(0.1) = 0.683772...
    s = Iterative(final_sparsity=0.9, rounds=2, every=1)
    assert s.per_round == pytest.approx(0.6837722340)
    assert s.get_sparsity(1) == pytest.approx(0.6837722340)
    assert s.get_sparsity(2) == 0.9
    for k in range(3):
        assert s.get_sparsity(k) == pytest.approx(1 - (1 - s.per_round) ** k)


def test_iterative_from_rate() -> None:
    s = Iterative.from_rate(0.2, rounds=10, every=3)
    assert s.final == pytest.approx(1 - 0.8**10)
    assert s.get_sparsity(30) == pytest.approx(0.8926258176)


# ----------------------------------------------------------------------------- one-shot


def test_one_shot() -> None:
    s = OneShot(0.7, at=3)
    assert [s.get_sparsity(t) for t in range(6)] == [0.0, 0.0, 0.0, 0.7, 0.7, 0.7]
    assert s.pruning_steps(10) == [3]
    s0 = OneShot(0.5)
    assert s0.get_sparsity(0) == 0.5
    assert s0.pruning_steps(10) == [0]


# ----------------------------------------------------------------------------- one-cycle


def test_one_cycle_shape() -> None:
    s = OneCycle(final_sparsity=0.8, total_steps=100)
    values = [s.get_sparsity(t) for t in range(120)]
    assert values[0] == 0.0
    assert values[100] == pytest.approx(0.8)
    assert values[119] == pytest.approx(0.8)
    assert all(b >= a for a, b in itertools.pairwise(values))
    # slow start, fast middle, flat end
    start, middle, end = values[10] - values[0], values[40] - values[30], values[100] - values[90]
    assert middle > start and middle > end


def test_one_cycle_ramp_by_hand() -> None:
    # at the inflection x = beta/alpha = 6/14: (σ(0) - σ(-6)) / (σ(8) - σ(-6))
    s = OneCycle(final_sparsity=0.9, total_steps=14)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = (0.5 - sig(-6)) / (sig(8) - sig(-6))
    assert expected == pytest.approx(0.498928, abs=1e-6)
    assert s.get_sparsity(6) == pytest.approx(0.9 * expected)
    assert s.ramp(0.0) == 0.0
    assert s.ramp(1.0) == pytest.approx(1.0)


def test_one_cycle_frequency_and_begin() -> None:
    s = OneCycle(
        final_sparsity=0.5, total_steps=20, begin_step=10, frequency=5, initial_sparsity=0.1
    )
    assert s.get_sparsity(0) == 0.1
    assert s.get_sparsity(12) == s.get_sparsity(10) == pytest.approx(0.1)
    assert s.pruning_steps(50) == [0, 15, 20, 25, 30]
    assert s.get_sparsity(30) == 0.5


# ----------------------------------------------------------------------------- interface


def test_step_and_state_dict_round_trip() -> None:
    s = cubic()
    assert s.last_step == 0
    for _ in range(37):
        s.step()
    assert s.last_step == 37
    assert s.get_sparsity() == s.get_sparsity(37) == s.get_sparsity(30)
    state = s.state_dict()
    fresh = cubic()
    fresh.load_state_dict(state)
    assert fresh.last_step == 37
    assert fresh.get_sparsity() == s.get_sparsity()
    assert fresh.step() == s.step()
    # step() returns the target at the new step; is_pruning_step() defaults to the counter
    t = OneShot(0.5, at=2)
    assert t.step() == 0.0 and not t.is_pruning_step()
    assert t.step() == 0.5 and t.is_pruning_step()


def test_load_state_dict_refuses_other_schedule() -> None:
    state = cubic().state_dict()
    with pytest.raises(CheckpointError, match="one_shot"):
        OneShot(0.5).load_state_dict(state)
    other = GradualCubic(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=100, frequency=10
    )
    with pytest.raises(CheckpointError, match="final_sparsity"):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError, match="last_step"):
        cubic().load_state_dict({"name": "gradual_cubic", "params": state["params"]})


def test_registry_and_factory() -> None:
    assert SCHEDULES.names() == ["gradual_cubic", "iterative", "one_cycle", "one_shot"]
    for entry in SCHEDULES:
        assert entry.meta["paper"]
    s = make_schedule("iterative", final_sparsity=0.9, rounds=2, every=1)
    assert isinstance(s, Iterative)
    assert isinstance(make_schedule("one_cycle", final_sparsity=0.9, total_steps=10), OneCycle)


def test_factory_errors() -> None:
    with pytest.raises(UnknownNameError, match="known: gradual_cubic, iterative"):
        make_schedule("linear")
    with pytest.raises(ConfigError, match="'round'"):
        make_schedule("iterative", final_sparsity=0.9, round=2, every=1)
    with pytest.raises(ConfigError, match="'every'"):
        make_schedule("iterative", final_sparsity=0.9, rounds=2)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: OneShot(1.0), "sparsity"),
        (lambda: OneShot(-0.1), "sparsity"),
        (lambda: OneShot(0.5, at=-1), "at"),
        (lambda: Iterative(0.9, rounds=0, every=1), "rounds"),
        (lambda: Iterative(0.9, rounds=2, every=0), "every"),
        (lambda: Iterative(float("nan"), rounds=2, every=1), "final_sparsity"),
        (lambda: GradualCubic(0.5, 0.2, 0, 10, 1), "final_sparsity"),
        (lambda: GradualCubic(0.0, 0.9, 10, 10, 1), "end_step"),
        (lambda: GradualCubic(0.0, 0.9, 0, 10, 0), "frequency"),
        (lambda: GradualCubic(0.0, 0.9, 0, 10.5, 1), "end_step"),
        (lambda: OneCycle(0.9, total_steps=0), "total_steps"),
        (lambda: OneCycle(0.9, total_steps=10, alpha=0), "alpha"),
        (lambda: OneCycle(0.9, total_steps=10, beta=-1), "beta"),
        (lambda: make_schedule("one_shot", sparsity=True), "sparsity"),
    ],
)
def test_bad_params_name_the_field(build, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build()


def test_bad_step() -> None:
    with pytest.raises(ConfigError, match="t must be"):
        cubic().get_sparsity(-1)
