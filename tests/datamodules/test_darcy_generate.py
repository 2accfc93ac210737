"""Generated Darcy data: the discrete equation holds, two coefficient values (the FNO pair or another), determinism."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.darcy_generate import HIGH, LOW, darcy_operator, generate_darcy, solve_darcy


def loop_operator_apply(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``-∇·(a ∇u)`` at interior nodes, written stencil by stencil (independent of darcy_operator)."""
    s = a.shape[0]
    h = 1.0 / (s - 1)
    out = np.zeros((s - 2, s - 2))
    for i in range(1, s - 1):
        for j in range(1, s - 1):
            total = 0.0
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                face = 0.5 * (a[i, j] + a[i + di, j + dj])
                total += face * (u[i, j] - u[i + di, j + dj])
            out[i - 1, j - 1] = total / h**2
    return out


def test_solution_satisfies_the_discrete_equation():
    coeff, sol = generate_darcy(2, 17, seed=3)
    for a, u in zip(coeff.astype(np.float64), sol):
        u64 = solve_darcy(a)
        np.testing.assert_allclose(u, u64, rtol=1e-5, atol=1e-9)  # stored float32
        residual = loop_operator_apply(a, u64) - 1.0
        assert np.abs(residual).max() < 1e-9
        assert np.all(u64[0] == 0) and np.all(u64[-1] == 0) and np.all(u64[:, 0] == 0) and np.all(u64[:, -1] == 0)


def test_operator_is_symmetric_positive_definite():
    coeff, _ = generate_darcy(1, 9, seed=0)
    mat = darcy_operator(coeff[0].astype(np.float64)).toarray()
    np.testing.assert_allclose(mat, mat.T)
    assert np.linalg.eigvalsh(mat).min() > 0


def test_coefficient_takes_two_values_with_fno_statistics():
    coeff, sol = generate_darcy(8, 29, seed=1)
    assert set(np.unique(coeff)) == {LOW, HIGH}
    assert 3.0 < coeff.std() < 5.5  # two values 3/12 in roughly equal parts: std ~4.5
    assert (sol > 0).sum() > 0.8 * sol[:, 1:-1, 1:-1].size  # f = 1 > 0 gives a positive solution


def test_generation_is_deterministic_for_a_seed():
    a1, s1 = generate_darcy(2, 11, seed=5)
    a2, s2 = generate_darcy(2, 11, seed=5)
    a3, _ = generate_darcy(2, 11, seed=6)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("s", [9, 16])
def test_shapes_and_dtype(s):
    coeff, sol = generate_darcy(3, s, seed=0)
    assert coeff.shape == sol.shape == (3, s, s)
    assert coeff.dtype == sol.dtype == np.float32


def test_permeability_pair_sets_the_values_and_keeps_the_geometry():
    fno, fno_sol = generate_darcy(3, 11, seed=2)
    same, same_sol = generate_darcy(3, 11, seed=2, permeability=(HIGH, LOW))
    np.testing.assert_array_equal(fno, same)  # the default is the FNO pair, bit for bit
    np.testing.assert_array_equal(fno_sol, same_sol)
    coeff, sol = generate_darcy(3, 11, seed=2, permeability=(24.0, 1.5))
    assert set(np.unique(coeff)) == {1.5, 24.0}
    np.testing.assert_array_equal(coeff == 24.0, fno == HIGH)  # one seed, one geometry
    for a, u in zip(coeff.astype(np.float64), sol):
        np.testing.assert_allclose(u, solve_darcy(a), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("bad", [(12.0, 0.0), (12.0, -3.0), (3.0, 3.0), (12.0, float("nan")), (12.0,), "12,3"])
def test_bad_permeability_pairs_are_refused(bad):
    with pytest.raises(ValueError, match="permeability must be two"):
        generate_darcy(1, 5, seed=0, permeability=bad)
