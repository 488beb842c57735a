"""Rank selection: EVBMF (rank and noise recovered, orientation, pure noise) and the energy rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tflowrank.decompositions.energy import energy_rank
from tflowrank.decompositions.vbmf import evbmf, vbmf_rank, vbmf_ranks_tucker2


def _low_rank_plus_noise(rows, cols, rank, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) + sigma * rng.normal(
        size=(rows, cols)
    )


@pytest.mark.parametrize("rows, cols, rank", [(40, 100, 5), (100, 40, 5), (64, 576, 10), (30, 30, 3)])
def test_rank_and_noise_variance_are_recovered_at_a_clear_snr(rows, cols, rank):
    matrix = _low_rank_plus_noise(rows, cols, rank, sigma=0.1)
    result = evbmf(matrix)
    assert result.rank == rank and vbmf_rank(matrix) == rank
    assert result.sigma2 == pytest.approx(0.01, rel=0.2)
    observed = np.linalg.svd(matrix, compute_uv=False)[:rank]
    assert result.singular_values.shape == (rank,)
    assert np.all(result.singular_values > 0) and np.all(result.singular_values < observed)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), rank=st.integers(0, 4), seed=st.integers(0, 100))
def test_orientation_does_not_matter(rows, cols, rank, seed):
    matrix = _low_rank_plus_noise(rows, cols, min(rank, rows, cols), sigma=0.3, seed=seed)
    a, b = evbmf(matrix), evbmf(matrix.T)
    # The noise variance comes from a bounded scalar search on a free energy that is flat at its
    # minimum: the two orientations agree to the search's tolerance (worst seen 3e-7), not to 1e-9.
    assert a.rank == b.rank and a.sigma2 == pytest.approx(b.sigma2, rel=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_pure_noise_has_rank_zero_at_any_scale(scale):
    noise = scale * np.random.default_rng(1).normal(size=(50, 200))
    result = evbmf(noise)
    assert result.rank == 0 and result.singular_values.shape == (0,)
    assert result.sigma2 == pytest.approx(scale**2, rel=0.2)


def test_given_noise_variance_sets_the_threshold():
    matrix = _low_rank_plus_noise(40, 100, 5, sigma=0.1)
    assert evbmf(matrix, sigma2=0.01).rank == 5 and evbmf(matrix, sigma2=0.01).sigma2 == 0.01
    assert evbmf(matrix, sigma2=1e4).rank == 0


def test_noiseless_low_rank_and_zero_matrices():
    assert vbmf_rank(_low_rank_plus_noise(20, 30, 4, sigma=0.0)) == 4
    zero = evbmf(np.zeros((5, 7)))
    assert zero.rank == 0 and zero.sigma2 == 0.0


def test_tucker2_ranks_come_from_the_channel_unfoldings():
    rng = np.random.default_rng(2)
    core = rng.normal(size=(3, 3, 4, 6))
    kernel = np.einsum("ca,ijab,ob->ijco", rng.normal(size=(32, 4)), core, rng.normal(size=(48, 6)))
    kernel = (kernel + 0.05 * rng.normal(size=kernel.shape)).astype(np.float32)
    assert vbmf_ranks_tucker2(kernel) == (4, 6)
    assert vbmf_ranks_tucker2(rng.normal(size=(3, 3, 16, 16)).astype(np.float32)) == (1, 1)


def test_bad_inputs_are_rejected():
    with pytest.raises(
        ValueError, match=r"^`matrix` must be a non-empty array of 2 dimensions. Received: matrix.shape=\(3,\)$"
    ):
        evbmf(np.ones(3))
    with pytest.raises(ValueError, match=r"matrix.shape=\(0, 3\)"):
        vbmf_rank(np.ones((0, 3)))
    with pytest.raises(
        TypeError, match=r"^`matrix` must be a floating-point array. Received: matrix.dtype=int64$"
    ):
        evbmf(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^`matrix` contains NaN or infinite values.$"):
        evbmf(np.full((2, 2), np.nan))
    for sigma2 in (0.0, -1.0, True, "1"):
        with pytest.raises(ValueError) as info:
            evbmf(np.ones((2, 2)), sigma2=sigma2)
        assert (
            str(info.value)
            == f"`sigma2` must be None or a positive finite number. Received: sigma2={sigma2!r}"
        )
    with pytest.raises(ValueError, match=r"kernel.shape=\(3, 3\)"):
        vbmf_ranks_tucker2(np.ones((3, 3)))


@pytest.mark.parametrize(
    "values, energy, rank",
    [
        ([3.0, 2.0, 1.0], 9 / 14, 1),
        ([3.0, 2.0, 1.0], 0.65, 2),
        ([3.0, 2.0, 1.0], 1.0, 3),
        ([3.0, 2.0, 0.0, 0.0], 1.0, 2),
        ([0.0, 0.0], 0.5, 1),
        ([5.0], 1e-9, 1),
    ],
)
def test_energy_rank_is_the_smallest_rank_keeping_the_energy(values, energy, rank):
    assert energy_rank(np.array(values), energy) == rank


def test_energy_rank_matches_the_truncation_error():
    s = np.linalg.svd(np.random.default_rng(3).normal(size=(20, 30)), compute_uv=False)
    r = energy_rank(s, 0.9)
    assert np.sum(s[:r] ** 2) / np.sum(s**2) >= 0.9 > np.sum(s[: r - 1] ** 2) / np.sum(s**2)


@pytest.mark.parametrize("energy", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_energy_is_rejected_with_the_value(energy):
    with pytest.raises(ValueError) as info:
        energy_rank([1.0], energy)
    assert str(info.value) == f"`energy` must be a number in (0, 1]. Received: energy={energy!r}"


@pytest.mark.parametrize("values", [[1.0, 2.0], [-1.0], [np.inf]])
def test_bad_singular_values_are_rejected(values):
    with pytest.raises(
        ValueError,
        match=r"^`singular_values` must be finite, non-negative and sorted in non-increasing order",
    ):
        energy_rank(values, 0.5)
    with pytest.raises(ValueError, match=r"^`singular_values` must be a non-empty 1-D array of real numbers"):
        energy_rank([], 0.5)
