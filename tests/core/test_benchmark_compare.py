"""benchmarks.compare: metrics recomputed on the conformers every model held out."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.compare import compare, format_comparison, main
from densnet_core.units import DEBYE_PER_AU


def _record(key: str, mu: list[float], alpha_iso: float, *, xtb_mu: list[float] | None = None):
    ref_alpha = np.diag([10.0, 20.0, 30.0])  # alpha_iso 20
    return {
        "name": f"mol-{key}",
        "conformer_key": key,
        "dipole_ref_au": [0.0, 0.0, 1.0],
        "alpha_ref_au": ref_alpha.reshape(9).tolist(),
        "model_dipole_au": mu,
        "model_alpha_au": (ref_alpha + (alpha_iso - 20.0) * np.eye(3)).reshape(9).tolist(),
        "model_nmae_fit_pct": 2.0,
        "xtb_dipole_au": xtb_mu if xtb_mu is not None else [math.nan] * 3,
        "xtb_alpha_au": [math.nan] * 9,
    }


def _payload(model_id: str, held_out: list[dict]) -> dict:
    return {"model_id": model_id, "sets": {"held_out": {"per_conformer": held_out}}}


def test_only_shared_conformers_enter_the_means():
    a = _payload("A", [_record("k1", [0, 0, 5.0], 40.0), _record("k2", [0, 0, 1.1], 22.0)])
    b = _payload("B", [_record("k2", [0, 0, 1.3], 19.0), _record("k3", [0, 0, 9.0], 1.0)])
    shared, results = compare([a, b], "held_out")
    assert shared == ["k2"]
    assert results[0]["model"]["dipole_mae_debye"] == pytest.approx(0.1 * DEBYE_PER_AU)
    assert results[1]["model"]["dipole_mae_debye"] == pytest.approx(0.3 * DEBYE_PER_AU)
    assert results[0]["model"]["alpha_iso_mape_pct"] == pytest.approx(10.0)
    assert results[1]["model"]["alpha_iso_mape_pct"] == pytest.approx(5.0)
    assert "xtb" not in results[0]  # no xTB numbers in these files


def test_xtb_row_and_cli(tmp_path, capsys):
    a = _payload("A", [_record("k1", [0, 0, 1.2], 20.0, xtb_mu=[0, 0, 0.5])])
    b = _payload("B", [_record("k1", [0, 0, 1.0], 20.0)])
    text = format_comparison(["A", "B"], [a, b], per_molecule=True)
    assert "GFN2-xTB" in text and "1 conformers held out of every model" in text
    assert "heterocycles: 0 conformers" in text
    paths = []
    for name, p in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(p).replace("NaN", "null"))
        paths.append(str(path))
    assert main([*paths, "--name", "first", "--name", "second"]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" in out
    assert f"{0.5 * DEBYE_PER_AU:.3f}" in out  # the xTB dipole error of k1
    assert main([*paths, "--name", "only-one"]) == 2
