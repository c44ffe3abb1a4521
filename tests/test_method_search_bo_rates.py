"""bo_rates: expected improvement worked by hand, the GP-EI proposal on a toy objective, and a
killed search that resumes to the same result."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunekit.methods.bo_rates import BORates, expected_improvement, propose
from test_method_search_core import check_resume


def test_expected_improvement_by_hand() -> None:
    # mu 1, sigma 1, best 0, xi 0: z = 1, EI = 1 * Phi(1) + phi(1) = 0.841345 + 0.241971
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert expected_improvement(np.array([1.0]), np.array([1.0]), 0.0, 0.0)[0] == pytest.approx(
        0.841345 + phi1, abs=1e-6
    )
    # mu 0.5 below best 1 with sigma 0.5, xi 0.5: z = -2, EI = -1 * Phi(-2) + 0.5 * phi(-2)
    ei = expected_improvement(np.array([0.5]), np.array([0.5]), 1.0, 0.5)[0]
    assert ei == pytest.approx(
        -1 * 0.0227501 + 0.5 * math.exp(-2) / math.sqrt(2 * math.pi), abs=1e-6
    )
    # no uncertainty: the plain gain, floored at zero
    assert list(expected_improvement(np.array([2.0, -1.0]), np.zeros(2), 0.5, 0.0)) == [1.5, 0.0]


def test_proposal_moves_toward_the_better_rates() -> None:
    # accuracy peaks where layer 0's rate is high and layer 1's low; after a few samples the
    # proposal lies in that corner (a magnitude rule has no notion of it at all)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 2))
    y = 100 - 50 * ((x[:, 0] - 0.9) ** 2 + (x[:, 1] - 0.1) ** 2)
    nxt = propose(x, y, rng, candidates=500, xi=0.01, seed=0)
    assert nxt[0] > 0.6 and nxt[1] < 0.4


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch) -> None:
    clean, resumed = check_resume(
        BORates, {"search_budget": "6", "initial": 3, "candidates": 200}, tmp_path, monkeypatch
    )
    assert clean.best == resumed.best
    assert clean.rates == resumed.rates
