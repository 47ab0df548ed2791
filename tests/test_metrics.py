"""Tests of ddpm_core.metrics: FID, IS and KID against pytorch-fid and torch-fidelity as oracles,
and the behaviour the definitions promise."""
import numpy as np
import pytest
import torch

from ddpm_core.metrics import FeatureStats, FIDResult, fid_from_stats, fid_result, frechet_distance, inception_score, kid

pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")



def _two_feature_sets(n: int, d: int, seed: int = 0):
    """Two sets of features [n, d] from different Gaussians (correlated, shifted, rescaled)."""
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((n, d))
    mix = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    f2 = 1.2 * rng.standard_normal((n, d)) @ mix + 0.1
    return f1, f2


def _stats(f):
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _oracles(mu1, s1, mu2, s2):
    """Our FID, pytorch-fid's and torch-fidelity's on the same statistics (test-only libraries)."""
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    tf_fid = pytest.importorskip("torch_fidelity.metric_fid")
    ours = frechet_distance(mu1, s1, mu2, s2)
    pfid = float(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2))
    tfid = tf_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    return ours, pfid, tfid[tf_fid.KEY_METRIC_FID]


def test_frechet_distance_matches_both_libraries_on_small_statistics():
    f1, f2 = _two_feature_sets(400, 64)
    ours, pfid, tfid = _oracles(*_stats(f1), *_stats(f2))
    assert ours > 1.0
    assert abs(ours - pfid) / pfid < 1e-6
    assert abs(ours - tfid) / tfid < 1e-6


def test_frechet_distance_matches_both_libraries_on_random_spd_matrices():
    rng = np.random.default_rng(1)
    d = 48
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.05 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours, pfid, tfid = _oracles(mu1, s1, mu2, s2)
    assert abs(ours - pfid) / pfid < 1e-6
    assert abs(ours - tfid) / tfid < 1e-6


@pytest.mark.slow
def test_frechet_distance_matches_both_libraries_on_2048d_statistics():
    from threadpoolctl import threadpool_limits

    f1, f2 = _two_feature_sets(2560, 2048, seed=2)  # more samples than dimensions: full rank
    # One BLAS thread: on a shared 2-core machine two threads made this 4x slower (200 s vs 46 s).
    with threadpool_limits(limits=1):
        ours, pfid, tfid = _oracles(*_stats(f1), *_stats(f2))
    assert abs(ours - pfid) / pfid < 1e-6
    assert abs(ours - tfid) / tfid < 1e-6


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    f1, f2 = _two_feature_sets(300, 32, seed=3)
    mu1, s1 = _stats(f1)
    mu2, s2 = _stats(f2)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 1.0
    assert abs(d12 - d21) < 1e-9 * d12


def test_frechet_distance_of_singular_covariances_is_finite_and_exact():
    # 20 samples in 64 dimensions: rank-19 covariances, where a plain sqrtm is unstable.
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.5
    mu1, s1 = _stats(f1)
    mu2, s2 = _stats(f2)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    # With equal singular covariances Tr((S S)^(1/2)) = Tr(S), so only the mean term remains.
    same_cov = frechet_distance(mu1, s1, mu2, s1)
    assert abs(same_cov - np.sum((mu1 - mu2) ** 2)) < 1e-8 * np.trace(s1)


def test_frechet_distance_accepts_torch_tensors_and_rejects_bad_input():
    f1, f2 = _two_feature_sets(200, 16, seed=5)
    mu1, s1 = _stats(f1)
    mu2, s2 = _stats(f2)
    as_torch = frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)))
    assert abs(as_torch - frechet_distance(mu1, s1, mu2, s2)) < 1e-3 * as_torch
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1[:8], s1, mu2, s2)
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(mu1, s1 + np.triu(np.ones_like(s1), 1), mu2, s2)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu1, -s1, mu2, s2)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # numpy warns about the one row itself
        one_row = np.cov(f1[:1], rowvar=False)
    with pytest.raises(ValueError, match=r"sigma2 contains NaN .*fewer than 2 samples is NaN \(np.cov of one row\)"):
        frechet_distance(mu1, s1, f1[0], one_row)
    with pytest.raises(ValueError, match=r"mu1 contains NaN or infinite values$"):
        frechet_distance(np.full_like(mu1, np.nan), s1, mu2, s2)


def test_feature_stats_streamed_in_chunks_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(6)
    f = rng.standard_normal((1000, 24)) * 3.0 + 100.0  # large mean: naive sums would lose digits
    stats = FeatureStats()
    for lo, hi in [(0, 1), (1, 7), (7, 300), (300, 301), (301, 1000)]:
        stats.update(torch.from_numpy(f[lo:hi]) if lo % 2 else f[lo:hi])
    assert stats.n == 1000 and stats.dim == 24
    np.testing.assert_allclose(stats.mean, f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-10)
    assert stats.mean.dtype == np.float64 and stats.cov.dtype == np.float64
    with pytest.raises(ValueError, match="dimension"):
        stats.update(np.zeros((3, 5)))


def test_feature_stats_save_and_load_round_trip(tmp_path):
    f = np.random.default_rng(7).standard_normal((50, 8))
    stats = FeatureStats().update(f)
    stats.save(tmp_path / "s.npz", extractor="test net")
    back = FeatureStats.load(tmp_path / "s.npz")
    assert back.n == 50 and back.meta == {"extractor": "test net"}
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.cov, stats.cov)


def test_fid_result_reports_fid_with_sample_counts_and_extractor():
    f1, f2 = _two_feature_sets(500, 16, seed=8)
    ref = FeatureStats().update(f1)
    res = fid_result(f2[:300], ref, "test net")
    assert isinstance(res, FIDResult)
    assert (res.n_samples, res.n_reference, res.extractor) == (300, 500, "test net")
    assert abs(res.fid - frechet_distance(*_stats(f2[:300]), *_stats(f1))) < 1e-9 * res.fid
    assert abs(fid_from_stats(FeatureStats().update(f2[:300]), ref) - res.fid) < 1e-9 * res.fid
    assert "300 samples" in str(res) and "test net" in str(res)


def test_inception_score_matches_torch_fidelity():
    tf_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = torch.from_numpy(np.random.default_rng(9).standard_normal((1000, 1008)) * 3.0)
    ours = inception_score(logits, splits=10)
    ref = tf_isc.isc_features_to_metric(logits, splits=10, shuffle=False)
    assert abs(ours[0] - ref[tf_isc.KEY_METRIC_ISC_MEAN]) < 1e-9 * ours[0]
    assert abs(ours[1] - ref[tf_isc.KEY_METRIC_ISC_STD]) < 1e-7 * max(ours[1], 1e-3)
    assert ours[1] > 0


def test_inception_score_is_k_for_confident_balanced_classes_and_1_for_one_class():
    n, k = 2000, 10
    confident = 30.0 * np.eye(k)[np.arange(n) % k]  # every split holds every class equally
    mean, std = inception_score(confident, splits=10)
    assert abs(mean - k) < 1e-3 and std < 1e-6
    one_class = 30.0 * np.eye(k)[np.zeros(n, dtype=int)] + np.random.default_rng(10).normal(0, 0.1, (n, k))
    assert abs(inception_score(one_class, splits=10)[0] - 1.0) < 1e-6
    with pytest.raises(ValueError, match="splits"):
        inception_score(confident[:5], splits=10)


def test_kid_matches_torch_fidelity_with_the_same_subsets():
    tf_kid = pytest.importorskip("torch_fidelity.metric_kid")
    f1, f2 = _two_feature_sets(300, 32, seed=11)
    ours = kid(f1, f2, num_subsets=20, subset_size=100, seed=2020)
    ref = tf_kid.kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=20,
                                        kid_subset_size=100, rng_seed=2020, verbose=False)
    assert abs(ours[0] - ref[tf_kid.KEY_METRIC_KID_MEAN]) < 1e-9 * abs(ours[0])
    assert abs(ours[1] - ref[tf_kid.KEY_METRIC_KID_STD]) < 1e-7 * abs(ours[1])


def test_kid_is_near_zero_for_one_distribution_at_every_sample_size():
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    shifted = rng.standard_normal((2000, 16)) + 0.3
    different = kid(a, shifted, num_subsets=10, subset_size=200)[0]
    assert different > 0.1
    # A biased (V-statistic) estimate would sit near 2 (E k(x,x) - E k(x,x')) / m above 0, about
    # 0.27 at m = 50 and 0.027 at m = 500; the unbiased one stays near 0 at both sizes.
    means = [kid(a, b, num_subsets=s, subset_size=m)[0] for m, s in ((50, 200), (500, 20))]
    assert all(abs(m) < 0.05 * different for m in means), (means, different)
    # subset_size larger than the samples is capped at the sample size
    assert np.isfinite(kid(a[:30], b[:40], num_subsets=3, subset_size=1000)[0])
