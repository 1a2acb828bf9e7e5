"""Model directories: save and load trained density models (safetensors only, never pickle).

A model directory holds

``model.safetensors``
    The (EMA) weights, ``DensityModel.state_dict()``.
``config.json``
    ``{"format": "densnet-density-model", "format_version": 1, "model": <DensityModel.config>,
    "level_of_theory": <LevelOfTheory fields>, "aux_basis": ...}`` — enough to rebuild the
    network (:meth:`DensityModel.from_config`) and to featurise inputs (aux basis, prior).
``model_card.json``
    Provenance and quality: level of theory label and hash, aux basis, elements covered,
    training-data hash, numbers of training/validation molecules and conformers, validation
    metrics of the model and of the SAD prior side by side, ``training_inchikeys``, created
    date, densnet/torch/e3nn/PySCF versions and ``weights_sha1``.

Every file is written atomically (temporary file in the same folder + ``os.replace``), the
weights first and the card last. :func:`load_model` parses the weights with safetensors (a
pickle or any other file in their place is refused), checks their sha1 against the card's
``weights_sha1`` when the card has one (so a modified or swapped weights file is refused too),
and loads them strictly (missing or unexpected tensors are an error).

``model_id`` = ``<directory name>-<sha1 of model.safetensors>[:8]``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densnet_core.level import LevelOfTheory
from densnet_core.store import atomic_file

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "WEIGHTS_FILE",
    "ModelFileError",
    "ModelInfo",
    "load_model",
    "read_model_info",
    "resolve_device",
    "save_model",
    "software_versions",
    "weights_sha1",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.json"
FORMAT = "densnet-density-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model directory is missing files, or holds files that are not what they claim."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory says about its model.

    Attributes
    ----------
    model_id
        ``<dir name>-<sha1(weights)[:8]>``.
    model_dir
        The directory.
    level
        Level of theory of the training labels (aux basis, SAD prior).
    aux_basis
        Aux basis the model predicts coefficients of.
    elements
        Atomic numbers the model supports, sorted.
    config
        ``DensityModel.config``.
    card
        The model card (empty dict if the directory has none).
    weights_sha1
        sha1 of ``model.safetensors`` (hex).
    """

    model_id: str
    model_dir: Path
    level: LevelOfTheory
    aux_basis: str
    elements: tuple[int, ...]
    config: dict[str, Any] = field(repr=False)
    card: dict[str, Any] = field(repr=False)
    weights_sha1: str


def software_versions() -> dict[str, str]:
    """Versions of densnet, torch, e3nn, PySCF and safetensors."""
    import e3nn
    import pyscf
    import safetensors
    import torch

    import densnet_core

    return {
        "densnet": densnet_core.__version__,
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "pyscf": pyscf.__version__,
        "safetensors": safetensors.__version__,
    }


def weights_sha1(path: str | os.PathLike[str]) -> str:
    """sha1 (hex) of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_model(
    model: Any,
    model_dir: str | os.PathLike[str],
    *,
    level: LevelOfTheory,
    card: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Write a model directory (weights, config, card), each file atomically.

    Parameters
    ----------
    model
        A :class:`~densnet_core.model.DensityModel` (its ``state_dict`` and ``config``).
    model_dir
        Destination folder (created).
    level
        Level of theory of the training labels.
    card
        Model-card entries (metrics, data hash, ...). ``level_of_theory``, ``level_hash``,
        ``aux_basis``, ``elements``, ``created``, the software versions and
        ``weights_sha1`` / ``model_id`` are filled in here.

    Returns
    -------
    ModelInfo
    """
    from safetensors.torch import save as st_save

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    aux = model.config.get("aux_basis") or level.fit_auxbasis
    if aux != level.fit_auxbasis:
        raise ValueError(f"model aux basis {aux!r} != level's fit_auxbasis {level.fit_auxbasis!r}")
    # One metadata key only: safetensors writes the metadata map in a random order, so with
    # two keys the same weights gave different bytes (and model ids) from call to call.
    # The densnet format is recorded in config.json.
    blob = st_save(state, metadata={"format": "pt"})
    sha = hashlib.sha1(blob).hexdigest()
    _atomic_write_bytes(model_dir / WEIGHTS_FILE, blob)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dict(model.config),
        "level_of_theory": level.model_dump(),
        "aux_basis": aux,
    }
    _atomic_write_bytes(model_dir / CONFIG_FILE, _json_bytes(config))
    elements = sorted(int(z) for z in model.config["irreps_by_element"])
    model_id = f"{model_dir.resolve().name}-{sha[:8]}"
    full_card: dict[str, Any] = {
        "model_id": model_id,
        "level_of_theory": level.label,
        "level_hash": level.hash,
        "aux_basis": aux,
        "elements": elements,
        "element_symbols": [_symbol(z) for z in elements],
        **dict(card or {}),
        "weights_sha1": sha,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": software_versions(),
    }
    _atomic_write_bytes(model_dir / CARD_FILE, _json_bytes(full_card))
    return ModelInfo(
        model_id=model_id,
        model_dir=model_dir,
        level=level,
        aux_basis=aux,
        elements=tuple(elements),
        config=dict(model.config),
        card=full_card,
        weights_sha1=sha,
    )


def _symbol(z: int) -> str:
    from pyscf.data.elements import ELEMENTS

    return str(ELEMENTS[int(z)])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def read_model_info(model_dir: str | os.PathLike[str]) -> ModelInfo:
    """Read and check a model directory's config and card (does not load the weights).

    Raises
    ------
    ModelFileError
        Missing files, an unknown format, or weights whose sha1 differs from the card's.
    """
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILE
    for p in (weights, model_dir / CONFIG_FILE):
        if not p.is_file():
            raise ModelFileError(f"{model_dir} is not a densnet model directory: no {p.name}")
    config = _read_json(model_dir / CONFIG_FILE)
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{model_dir / CONFIG_FILE}: not a {FORMAT} config")
    if int(config.get("format_version", -1)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{model_dir}: model format {config.get('format_version')} is newer than this "
            f"densnet reads ({FORMAT_VERSION}); upgrade densnet"
        )
    card = _read_json(model_dir / CARD_FILE) if (model_dir / CARD_FILE).is_file() else {}
    sha = weights_sha1(weights)
    if card.get("weights_sha1") and card["weights_sha1"] != sha:
        raise ModelFileError(
            f"{weights}: sha1 {sha[:12]}… does not match the model card's "
            f"{str(card['weights_sha1'])[:12]}… — the weights were modified or replaced"
        )
    try:
        level = LevelOfTheory(**config["level_of_theory"])
        model_cfg = dict(config["model"])
        elements = tuple(sorted(int(z) for z in model_cfg["irreps_by_element"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{model_dir / CONFIG_FILE}: incomplete config ({exc})") from exc
    return ModelInfo(
        model_id=f"{model_dir.resolve().name}-{sha[:8]}",
        model_dir=model_dir,
        level=level,
        aux_basis=str(config.get("aux_basis") or level.fit_auxbasis),
        elements=elements,
        config=model_cfg,
        card=card,
        weights_sha1=sha,
    )


def load_model(
    model_dir: str | os.PathLike[str], *, device: str = "cpu", deferred_codegen: bool = False
) -> tuple[Any, ModelInfo]:
    """Load a model directory.

    Parameters
    ----------
    model_dir
        Folder written by :func:`save_model`.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    deferred_codegen
        Build only the e3nn code that prediction calls
        (:meth:`~densnet_core.model.DensityModel.build_inference_graphs`); the rest is
        generated on first use (:mod:`densnet_core.deferred_codegen`). Should the weights not
        fit the deferred build, the model is built again the usual way before any error is
        reported.

    Returns
    -------
    model
        :class:`~densnet_core.model.DensityModel` in eval mode, float32, on ``device``.
    info
        :class:`ModelInfo`.

    Raises
    ------
    ModelFileError
        Missing or tampered files (the weights are only ever parsed by safetensors).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from densnet_core.model import DensityModel

    info = read_model_info(model_dir)
    data = (Path(model_dir) / WEIGHTS_FILE).read_bytes()
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(
            f"{Path(model_dir) / WEIGHTS_FILE} is not a valid safetensors file ({exc}); "
            "refusing to load it (densnet never unpickles model files)"
        ) from exc
    model = DensityModel.from_config(info.config, deferred_codegen=deferred_codegen)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        if not deferred_codegen:
            raise ModelFileError(f"{model_dir}: weights do not match the config ({exc})") from exc
        return load_model(model_dir, device=device, deferred_codegen=False)
    dev = resolve_device(device)
    model = model.float().to(dev).eval()
    if deferred_codegen:
        model.build_inference_graphs()  # once here, not in every forked worker
    return model, info


def resolve_device(device: str) -> Any:
    """``torch.device`` for ``device``; a clear error if CUDA is asked for but unavailable."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu"
        )
    return dev
