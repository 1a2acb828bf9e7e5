"""`densnet_core.predict.import_e3nn_without_dynamo`: e3nn without torch._dynamo and sympy.

Each check runs in a fresh interpreter (the import state is what is tested)."""

from __future__ import annotations

import json
import subprocess
import sys

_EVALUATE = """
import json, sys, torch
{setup}
from e3nn import o3
before = sorted(m for m in ("sympy", "torch._dynamo") if m in sys.modules)
# the one e3nn module that needs sympy: built here, after the import
sh = o3.SphericalHarmonicsAlphaBeta(4)
f64 = torch.float64
values = sh(torch.tensor([0.3, 2.0], dtype=f64), torch.tensor([0.7, 1.1], dtype=f64))
print(json.dumps({{"before": before, "sympy_after": "sympy" in sys.modules,
                  "values": values.tolist()}}))
"""


def _run(setup: str) -> dict:
    code = _EVALUATE.format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_e3nn_imports_without_dynamo_or_sympy_and_still_builds_what_needs_sympy():
    fast = _run(
        "from densnet_core.predict import import_e3nn_without_dynamo\nimport_e3nn_without_dynamo()"
    )
    plain = _run("import e3nn.o3")
    assert fast["before"] == []  # neither was imported by e3nn
    assert "sympy" in plain["before"]  # the plain import does import it
    assert fast["sympy_after"]  # imported on demand by the Legendre builder
    assert fast["values"] == plain["values"]  # and the same numbers
