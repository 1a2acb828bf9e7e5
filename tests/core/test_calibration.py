"""Calibration figures on synthetic inputs with known answers, and the PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from densnet_core.calibration import (
    calibration_metrics,
    calibration_plot,
    coverage,
    fit_scale,
    format_report,
    ood_thresholds,
    spearman,
)


def test_spearman_known_answers():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    # textbook example: d = rank differences, rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    a = [106, 86, 100, 101, 99, 103, 97, 113, 112, 110]
    b = [7, 0, 27, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(a, b) == pytest.approx(-29 / 165)
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    u, v = rng.normal(size=50), rng.normal(size=50).round(1)  # with ties
    assert spearman(u, v) == pytest.approx(spearmanr(u, v).statistic)
    assert math.isnan(spearman([1, 2], [1, 2]))  # too few points
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant
    assert spearman([1, 2, np.nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # NaN pair dropped


def test_coverage_and_scale_known_answers():
    sigma = np.array([1.0, 1.0, 2.0, 2.0])
    err = np.array([1.0, 2.5, 3.9, 4.1])
    assert coverage(err, sigma) == pytest.approx(0.5)  # 1 <= 2 yes, 2.5 no, 3.9 yes, 4.1 no
    assert coverage(err, sigma, z=3.0) == pytest.approx(1.0)
    assert coverage(-err, sigma) == pytest.approx(0.5)  # signed errors
    assert fit_scale(2 * sigma, sigma) == pytest.approx(2.0)  # errors exactly 2 sigma
    assert fit_scale([3.0, 4.0], [1.0, 1.0]) == pytest.approx(math.sqrt(12.5))
    # a Gaussian with the right sigma: scale ~1, coverage ~95 %
    rng = np.random.default_rng(1)
    s = rng.uniform(0.5, 2.0, size=20000)
    e = np.abs(rng.normal(size=s.size) * s)
    assert fit_scale(e, s) == pytest.approx(1.0, abs=0.02)
    assert coverage(e, s) == pytest.approx(0.954, abs=0.01)
    thr = ood_thresholds({"dipole_debye": np.arange(101.0)}, quantile=0.95)
    assert thr == {"dipole_debye_std": pytest.approx(95.0)}


def test_calibration_metrics_and_plot(tmp_path):
    rng = np.random.default_rng(2)
    n = 200
    sd_d, sd_a = rng.uniform(0.05, 0.5, n), rng.uniform(0.2, 4.0, n)
    ref_d, ref_a = rng.uniform(0, 5, n), rng.uniform(10, 100, n)
    pred_d = ref_d + rng.normal(size=n) * sd_d
    pred_a = ref_a + rng.normal(size=n) * sd_a
    m = calibration_metrics(
        pred_dipole_debye=pred_d,
        std_dipole_debye=sd_d,
        pred_alpha_iso_au=pred_a,
        std_alpha_iso_au=sd_a,
        ref_dipole_debye=ref_d,
        ref_alpha_iso_au=ref_a,
    )
    assert m["n"] == n
    for prop in ("dipole_debye", "alpha_iso_au"):
        assert m[f"spearman_{prop}"] > 0.4  # |error| grows with sigma
        assert 0.9 < m[f"coverage2_{prop}"] <= 1.0
    assert m["mae_dipole_debye"] == pytest.approx(np.mean(np.abs(pred_d - ref_d)))
    text = format_report("synthetic", m)
    assert "Spearman" in text and "OK" in text
    png = calibration_plot(
        tmp_path / "cal.png",
        {
            "synthetic": {
                "err_dipole_debye": np.abs(pred_d - ref_d),
                "std_dipole_debye": sd_d,
                "err_alpha_iso_au": np.abs(pred_a - ref_a),
                "std_alpha_iso_au": sd_a,
            }
        },
        title="test",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
