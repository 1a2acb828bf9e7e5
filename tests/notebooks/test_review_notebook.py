"""The lead-optimization review notebook runs top to bottom on a real predictions table.

The table is made by the production path without Prefect: RDKit conformers
(:func:`densnet_core.conformers.process_batch`, up to 3 per molecule) for a few SMILES, one of
them unparsable, one with silicon, one with bromine (which the model does not cover) and one
anion, then :class:`densnet_core.predict.Predictor` with the untrained "small" model of the
prediction tests, written with :func:`densnet_core.store.write_table` next to the model folder
(the layout ``densnet run`` leaves) plus the Boltzmann-averaged ``predictions.molecules.parquet``.
The notebook is then executed with nbclient, as a user would run it from ``notebooks/``, once on
that table and once on its single-conformer subset (no molecules table).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from densnet_core import keys as K
from densnet_core import store
from densnet_core.conformers import process_batch
from densnet_core.inputs import InputRecord
from densnet_core.predict import Predictor, boltzmann_average, write_molecules_table
from tests.core.test_predict import make_model_dir

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "lead_optimization_review.ipynb"

# (name, SMILES): flexible molecules give several conformers; the last four do not predict
MOLECULES = [
    ("ethanol", "CCO"),
    ("1-pentanol", "CCCCCO"),
    ("ethanolamine", "NCCO"),
    ("diglyme-diol", "OCCOCCO"),
    ("chlorobenzene", "Clc1ccccc1"),
    ("2-fluoropyridine", "Fc1ccccn1"),
    ("broken-ring", "C1CC"),  # invalid SMILES
    ("tetramethylsilane", "C[Si](C)(C)C"),  # Si: unsupported by the conformer stage
    ("bromoethane", "CCBr"),  # Br: not covered by the model
    ("acetate", "CC(=O)[O-]"),  # charge -1: not in the model's training data
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like ``densnet run``'s output: ``model/`` and the predictions."""
    out = tmp_path_factory.mktemp("demo-output")
    model_dir = make_model_dir(out / "model")
    records = [InputRecord(record_index=i, name=n, smiles=s) for i, (n, s) in enumerate(MOLECULES)]
    conformers = process_batch(records, n_conformers=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = Predictor(model_dir, batch_size=8).predict_rows(conformers)
    finally:
        torch.set_num_threads(threads)
    store.write_table(rows, out / "predictions.parquet", "predictions")
    molecules = boltzmann_average(pd.DataFrame(rows))  # what the screen flow writes for > 1
    write_molecules_table(molecules, out / "predictions.molecules.parquet")
    # the single-conformer view of the same predictions, without a molecules table
    single = out / "single"
    first = [r for r in rows if r[K.CONFORMER_ID] == 0]
    store.write_table(first, single / "predictions.parquet", "predictions")
    return out


def _execute(predictions: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run the notebook from ``notebooks/`` with ``DENSNET_PREDICTIONS`` set; return it.

    Parameters
    ----------
    predictions
        The predictions table the notebook reviews.
    monkeypatch
        Sets the environment the kernel inherits (other review settings are cleared).

    Returns
    -------
    nbformat.NotebookNode
        The executed notebook, outputs included.
    """
    for name in ("SCORE", "ASCENDING", "MODEL_DIR", "SHORTLIST_CSV"):
        monkeypatch.delenv(f"DENSNET_REVIEW_{name}", raising=False)
    monkeypatch.setenv("DENSNET_PREDICTIONS", str(predictions))
    monkeypatch.setenv("DENSNET_REVIEW_TOP_N", "5")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def _cell(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    """The one cell carrying ``tag`` in its metadata."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as text/plain, text/markdown or text/html."""
    parts: list[str] = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        for mime in ("text/plain", "text/markdown", "text/html"):
            parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def _mimes(cell: nbformat.NotebookNode) -> list[str]:
    """MIME types of a cell's rich outputs (``image/png``, ``text/html``...)."""
    return [m for out in cell.get("outputs", []) for m in out.get("data", {})]


def _no_errors(nb: nbformat.NotebookNode) -> None:
    """Assert that no cell has an error output."""
    errors: list[Any] = [
        out for c in nb.cells if c.cell_type == "code" for out in c.outputs
        if out.output_type == "error"
    ]  # fmt: skip
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]


def test_notebook_is_stored_clean() -> None:
    """Valid nbformat v4, no outputs or execution counts, a tagged parameters cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id
    assert "DENSNET_PREDICTIONS" in _cell(nb, "parameters").source


@pytest.mark.slow
def test_review_notebook_runs_on_real_predictions(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multi-conformer table with a molecules table and a model card: every section has output."""
    table = store.read_table(run_dir / "predictions.parquet", "predictions")
    statuses = set(table[K.STATUS])
    assert {"ok", "invalid_smiles", "unsupported_element", "unsupported_charge"} <= statuses
    assert table.groupby(K.RECORD_INDEX).size().max() > 1  # several conformers somewhere

    t0 = time.perf_counter()
    nb = _execute(run_dir / "predictions.parquet", monkeypatch)
    print(f"notebook executed in {time.perf_counter() - t0:.1f} s")
    _no_errors(nb)

    counts = _text(_cell(nb, "status-counts"))
    for status in ("invalid_smiles", "unsupported_element", "unsupported_charge", "ok"):
        assert status in counts
    failed = _text(_cell(nb, "failed-records"))
    assert "broken-ring" in failed and "Si" in failed and "Br" in failed

    provenance = _text(_cell(nb, "provenance"))
    model_id = table[K.MODEL_ID].iloc[0]
    assert model_id in provenance and str(run_dir / "model") in provenance
    assert "no validation metrics" in provenance  # the untrained fixture has none
    assert "sanity check" in _text(_cell(nb, "qc"))  # pass or fail depends on random weights

    for tag in ("figure-distributions", "figure-scatter", "figure-conformer-spread"):
        assert "image/png" in _mimes(_cell(nb, tag)), tag
    assert "Boltzmann-averaged per-molecule table written by the screen" in _text(
        _cell(nb, "molecules")
    )

    ranked = _cell(nb, "ranked-table")
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in ranked.outputs)
    assert html.count("<svg") == 5  # TOP_N=5 structures, drawn headless
    assert "one row per molecule (Boltzmann average)" in _text(ranked)


@pytest.mark.slow
def test_review_notebook_single_conformer_table(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One conformer per molecule, no molecules table, no model card: said, not silently empty."""
    nb = _execute(run_dir / "single" / "predictions.parquet", monkeypatch)
    _no_errors(nb)
    spread = _cell(nb, "figure-conformer-spread")
    assert "single conformer" in _text(spread) and "image/png" not in _mimes(spread)
    assert "No per-molecule (Boltzmann-averaged) table" in _text(_cell(nb, "molecules"))
    # no model/ folder next to this table: the notebook says where it looked
    assert "no model card found" in _text(_cell(nb, "provenance"))
    ranked = _cell(nb, "ranked-table")
    assert "<svg" in "".join(str(o.get("data", {}).get("text/html", "")) for o in ranked.outputs)
    assert "one row per conformer," in _text(ranked)
