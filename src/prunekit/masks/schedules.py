"""Sparsity schedules: training step (or epoch) -> target sparsity, shaped like LR schedulers.

A pruning run rarely jumps straight to its final sparsity: removing weights gradually, while the
network keeps training, lets the remaining weights compensate. A schedule says *how much* of the
prunable weights should be zero at each step; the mask engine decides *which*. Keeping the two
apart lets any criterion run under any schedule, and lets a training loop drive pruning the way it
drives the learning rate::

    sched = make_schedule(
        "gradual_cubic",
        initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=1000, frequency=100,
    )
    for batch in loader:
        ...
        if sched.is_pruning_step():
            prune(model, sched.get_sparsity())
        sched.step()

Units are whatever the caller counts: steps or epochs. Step 0 is the first one. Each schedule is
a pure function of the step plus a counter, so ``state_dict()`` only has to carry the counter (and
the parameters, to refuse restoring into a schedule built differently).

This module stands alone: it imports nothing from the rest of :mod:`prunekit.masks`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

from prunekit.errors import CheckpointError, ConfigError
from prunekit.registry import Registry

__all__ = [
    "SCHEDULES",
    "GradualCubic",
    "Iterative",
    "OneCycle",
    "OneShot",
    "SparsitySchedule",
    "make_schedule",
]


# --------------------------------------------------------------------------- validation helpers


def _fraction(owner: str, field: str, value: Any) -> float:
    """A sparsity in [0, 1). 1 is refused: a fully pruned layer has no output left to train."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{owner}: {field} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{owner}: {field} must be in [0, 1), got {value!r}")
    return float(value)


def _int(owner: str, field: str, value: Any, minimum: int) -> int:
    """A whole number of steps, at least ``minimum``; bools and floats are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}: {field} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{owner}: {field} must be >= {minimum}, got {value!r}")
    return value


def _positive(owner: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}: {field} must be a finite number > 0, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{owner}: {field} must be > 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- base class


class SparsitySchedule:
    """Base class: a counter ``last_step`` and a pure map ``sparsity(t)``.

    Subclasses implement :meth:`sparsity`, keep their constructor arguments in ``self.params``
    (the state dict carries them so a restore into a differently built schedule is refused) and
    set ``name`` to their registry name.
    """

    name: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.last_step = 0

    # -- the map; subclasses override this only
    def sparsity(self, t: int) -> float:
        """Target sparsity at step ``t`` (>= 0)."""
        raise NotImplementedError

    # -- LR-scheduler-like interface
    def _check_t(self, t: int | None) -> int:
        if t is None:
            return self.last_step
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ConfigError(f"{type(self).__name__}: t must be an integer >= 0, got {t!r}")
        return t

    def get_sparsity(self, t: int | None = None) -> float:
        """Target sparsity at step ``t``; the current step (``last_step``) when ``t`` is None."""
        return self.sparsity(self._check_t(t))

    def is_pruning_step(self, t: int | None = None) -> bool:
        """True where the target differs from the step before, so the mask must be recomputed.

        Step 0 is compared with a dense model (sparsity 0): a schedule that starts above zero asks
        for a prune before the first step. Schedules hold their value exactly between updates
        (they evaluate their formula at the last update step), so exact comparison is safe.
        """
        t = self._check_t(t)
        before = 0.0 if t == 0 else self.sparsity(t - 1)
        return self.sparsity(t) != before

    def step(self) -> float:
        """Advance the counter by one step and return the new target sparsity."""
        self.last_step += 1
        return self.sparsity(self.last_step)

    def pruning_steps(self, until: int) -> list[int]:
        """Every step in ``[0, until]`` at which :meth:`is_pruning_step` is True (for plots, logs)."""
        until = self._check_t(until)
        return [t for t in range(until + 1) if self.is_pruning_step(t)]

    # -- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The counter, plus name and parameters so a restore can check it is the same schedule."""
        return {"name": self.name, "params": dict(self.params), "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counter. Refuses a state from another schedule or other parameters, since
        resuming a run under a different schedule would silently change the sparsity it reaches."""
        for key in ("name", "params", "last_step"):
            if key not in state:
                raise CheckpointError(f"schedule state dict lacks {key!r}")
        if state["name"] != self.name:
            raise CheckpointError(
                f"schedule state dict is for {state['name']!r}, not {self.name!r}"
            )
        for key, value in self.params.items():
            if state["params"].get(key) != value:
                raise CheckpointError(
                    f"schedule state dict has {key}={state['params'].get(key)!r}, "
                    f"this {self.name} schedule has {key}={value!r}"
                )
        step = state["last_step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(
                f"schedule state dict last_step must be an int >= 0, got {step!r}"
            )
        self.last_step = step

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


SCHEDULES: Registry[type[SparsitySchedule]] = Registry("sparsity schedule")


# --------------------------------------------------------------------------- one-shot


@SCHEDULES.register(
    "one_shot",
    paper="Han et al. 2015, 'Learning both Weights and Connections for Efficient Neural Networks'",
)
class OneShot(SparsitySchedule):
    """Prune once, to the full target: s_t = 0 for t < at, s_t = sparsity for t >= at.

    The classic train -> prune -> fine-tune pipeline (Han et al. 2015 in its one-round form), and
    the baseline every gradual schedule is compared against.
    """

    name = "one_shot"

    def __init__(self, sparsity: float, at: int = 0) -> None:
        owner = type(self).__name__
        super().__init__(
            sparsity=_fraction(owner, "sparsity", sparsity), at=_int(owner, "at", at, 0)
        )
        self.target = self.params["sparsity"]
        self.at = self.params["at"]

    def sparsity(self, t: int) -> float:
        return self.target if t >= self.at else 0.0


# --------------------------------------------------------------------------- iterative (IMP)


@SCHEDULES.register(
    "iterative",
    paper="Frankle & Carbin 2019, 'The Lottery Ticket Hypothesis' (iterative magnitude pruning)",
)
class Iterative(SparsitySchedule):
    """Prune the same fraction p of the *remaining* weights each round, as in lottery-ticket IMP.

    After k rounds a fraction (1 - p)^k of the weights survives, so s_k = 1 - (1 - p)^k. p is
    chosen so that the last round lands exactly on the target: (1 - p)^rounds = 1 - final, i.e.
    p = 1 - (1 - final)^(1/rounds). Frankle & Carbin prune p = 20% per round; with 10 rounds that
    is final = 1 - 0.8^10 ~= 0.893. Rounds fire at steps every, 2*every, ..., rounds*every;
    between rounds (and after the last) the sparsity is held.
    """

    name = "iterative"

    def __init__(self, final_sparsity: float, rounds: int, every: int) -> None:
        owner = type(self).__name__
        super().__init__(
            final_sparsity=_fraction(owner, "final_sparsity", final_sparsity),
            rounds=_int(owner, "rounds", rounds, 1),
            every=_int(owner, "every", every, 1),
        )
        self.final = self.params["final_sparsity"]
        self.rounds = self.params["rounds"]
        self.every = self.params["every"]
        #: the fraction of remaining weights removed per round
        self.per_round = 1.0 - (1.0 - self.final) ** (1.0 / self.rounds)

    @classmethod
    def from_rate(cls, per_round: float, rounds: int, every: int) -> Iterative:
        """Build from the per-round rate instead: final = 1 - (1 - per_round)^rounds."""
        p = _fraction(cls.__name__, "per_round", per_round)
        return cls(1.0 - (1.0 - p) ** rounds, rounds, every)

    def sparsity(self, t: int) -> float:
        k = min(t // self.every, self.rounds)
        if k == self.rounds:
            return self.final  # exact, not 1 - (1 - p)^rounds with its rounding error
        return 1.0 - (1.0 - self.per_round) ** k


# --------------------------------------------------------------------------- gradual cubic (AGP)


@SCHEDULES.register(
    "gradual_cubic",
    paper="Zhu & Gupta 2018, 'To prune, or not to prune: exploring the efficacy of pruning for "
    "model compression' (automated gradual pruning)",
)
class GradualCubic(SparsitySchedule):
    """Zhu & Gupta's automated gradual pruning: fast at first, slowing as few weights remain.

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3  for t in {t0, t0 + Δt, ..., t0 + n Δt},

    with t0 = begin_step, Δt = frequency and n Δt = end_step - begin_step. Before t0 the
    sparsity is s_i; between updates it is held at the last update's value; from end_step on it
    is s_f. The cubic prunes most while redundancy is high and tapers off so the network can
    recover near the end. If frequency does not divide end_step - begin_step, end_step is an
    update step as well, so the schedule still reaches s_f exactly at end_step.
    """

    name = "gradual_cubic"

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int = 1,
    ) -> None:
        owner = type(self).__name__
        s_i = _fraction(owner, "initial_sparsity", initial_sparsity)
        s_f = _fraction(owner, "final_sparsity", final_sparsity)
        t0 = _int(owner, "begin_step", begin_step, 0)
        t1 = _int(owner, "end_step", end_step, 0)
        dt = _int(owner, "frequency", frequency, 1)
        if s_f < s_i:
            raise ConfigError(
                f"{owner}: final_sparsity ({s_f}) must be >= initial_sparsity ({s_i})"
            )
        if t1 <= t0:
            raise ConfigError(f"{owner}: end_step ({t1}) must be > begin_step ({t0})")
        super().__init__(
            initial_sparsity=s_i,
            final_sparsity=s_f,
            begin_step=t0,
            end_step=t1,
            frequency=dt,
        )
        self.s_i, self.s_f, self.t0, self.t1, self.dt = s_i, s_f, t0, t1, dt

    def sparsity(self, t: int) -> float:
        if t < self.t0:
            return self.s_i
        if t >= self.t1:
            return self.s_f
        t_update = self.t0 + (t - self.t0) // self.dt * self.dt  # last update at or before t
        frac = (t_update - self.t0) / (self.t1 - self.t0)
        # the paper's formula rearranged as s_i + (s_f - s_i)(1 - (1 - frac)^3): equal in exact
        # arithmetic, but gives s_i exactly at t0, so t0 is not mistaken for a pruning step
        return self.s_i + (self.s_f - self.s_i) * (1.0 - (1.0 - frac) ** 3)


# --------------------------------------------------------------------------- one-cycle


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@SCHEDULES.register(
    "one_cycle",
    paper="Hubens et al. 2022, 'One-Cycle Pruning: Pruning ConvNets Under a Tight Training Budget' "
    "(ICIP 2022)",
)
class OneCycle(SparsitySchedule):
    """One-Cycle Pruning: a logistic ramp from the first step of training to the last.

    Hubens et al. prune from the start of training to its end along a logistic curve, so pruning
    is gentle while the weights are still random, fastest mid-training and gentle again at the
    end so the network can recover. With x = (t - begin_step) / total_steps in [0, 1], their
    curve (as we read the paper; defaults alpha = 14, beta = 6, the values of the authors' library,
    fasterai ``core/schedule.py`` / ``sparse/schedule.py`` ``sched_onecycle(..., α=14, β=6)``, which
    they report as good across data sets and architectures) is

        g_paper(x) = (1 + e^(beta - alpha)) / (1 + e^(beta - alpha x)) = σ(alpha x - beta) / σ(alpha - beta),

    which is exactly 1 at x = 1 but σ(-beta)/σ(alpha - beta) ~= 0.0025 (not 0) at x = 0. We rescale
    it so both ends are exact:

        g(x) = (σ(alpha x - beta) - σ(-beta)) / (σ(alpha - beta) - σ(-beta)),
        s_t  = s_i + (s_f - s_i) g(x),

    the same shape shifted down by at most 0.25% of the range: s_t = s_i at begin_step (nothing is
    pruned before training starts) and s_f at begin_step + total_steps. g is increasing, so the
    schedule is non-decreasing. The inflection (fastest pruning) is at x = beta / alpha (~0.43).
    Updates happen every ``frequency`` steps and hold in between; the end step is always an
    update; the value is held at s_f afterwards and at s_i before begin_step.
    """

    name = "one_cycle"

    def __init__(
        self,
        final_sparsity: float,
        total_steps: int,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        frequency: int = 1,
        alpha: float = 14.0,
        beta: float = 6.0,
    ) -> None:
        owner = type(self).__name__
        s_f = _fraction(owner, "final_sparsity", final_sparsity)
        s_i = _fraction(owner, "initial_sparsity", initial_sparsity)
        if s_f < s_i:
            raise ConfigError(
                f"{owner}: final_sparsity ({s_f}) must be >= initial_sparsity ({s_i})"
            )
        super().__init__(
            final_sparsity=s_f,
            total_steps=_int(owner, "total_steps", total_steps, 1),
            initial_sparsity=s_i,
            begin_step=_int(owner, "begin_step", begin_step, 0),
            frequency=_int(owner, "frequency", frequency, 1),
            alpha=_positive(owner, "alpha", alpha),
            beta=_positive(owner, "beta", beta),
        )
        p = self.params
        self.s_i, self.s_f = s_i, s_f
        self.t0, self.total, self.dt = p["begin_step"], p["total_steps"], p["frequency"]
        self.alpha, self.beta = p["alpha"], p["beta"]
        self._lo = _sigmoid(-self.beta)
        self._hi = _sigmoid(self.alpha - self.beta)

    def ramp(self, x: float) -> float:
        """g(x): 0 at x = 0, 1 at x = 1, logistic in between (see the class docstring)."""
        return (_sigmoid(self.alpha * x - self.beta) - self._lo) / (self._hi - self._lo)

    def sparsity(self, t: int) -> float:
        if t < self.t0:
            return self.s_i
        if t >= self.t0 + self.total:
            return self.s_f
        t_update = self.t0 + (t - self.t0) // self.dt * self.dt
        return self.s_i + (self.s_f - self.s_i) * self.ramp((t_update - self.t0) / self.total)


# --------------------------------------------------------------------------- factory


def make_schedule(name: str, **kw: Any) -> SparsitySchedule:
    """Build a registered schedule by name.

    An unknown name raises :class:`~prunekit.errors.UnknownNameError` listing the known ones; an
    unknown or missing keyword raises :class:`~prunekit.errors.ConfigError` naming it (rather than
    Python's ``TypeError``), as do out-of-range values.
    """
    cls = SCHEDULES.get(name)
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters.values() if p.name != "self"]
    names = [p.name for p in accepted]
    for key in kw:
        if key not in names:
            raise ConfigError(
                f"schedule {name!r}: unknown parameter {key!r}; expected: {', '.join(names)}"
            )
    for p in accepted:
        if p.default is inspect.Parameter.empty and p.name not in kw:
            raise ConfigError(f"schedule {name!r}: missing required parameter {p.name!r}")
    return cls(**kw)
