"""Train an MD model (density model, then the density -> energy model) on a label store.

    python scripts/train_md.py data/md/ethanol/labels -o models/densnet-md-ethanol \\
        --density-epochs 60 --energy-epochs 150 --joint-epochs 30

Stages: the density model on the fitted densities, the energy model with the density frozen
("staged"), then optionally both jointly; the card of the saved model compares the staged and
joint held-out errors and the better one (force MAE) is kept. See
:mod:`densnet_core.energy_train`. One torch thread (fastest on a busy two-core machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--density-init", type=Path, help="use this density model (no stage 1)")
    ap.add_argument("--density-preset", default="small")
    ap.add_argument("--energy-preset", default="small")
    ap.add_argument("--density-epochs", type=int, default=60)
    ap.add_argument("--energy-epochs", type=int, default=150)
    ap.add_argument("--joint-epochs", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--energy-lr", type=float, default=3e-3, help="peak lr of the energy stage")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--max-minutes-per-stage", type=float)
    ap.add_argument("--force-weight", type=float, default=1.0)
    ap.add_argument(
        "--density-dipole-weight", type=float, default=0.0, help="dipole term, density stage"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metric-cache", type=Path, help="folder caching Coulomb metrics (.npy)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from densnet_core.energy_train import train_md_model

    result = train_md_model(
        args.labels,
        args.out,
        density_init=args.density_init,
        density_preset=args.density_preset,
        energy_preset=args.energy_preset,
        density_epochs=args.density_epochs,
        energy_epochs=args.energy_epochs,
        joint_epochs=args.joint_epochs,
        batch_size=args.batch_size,
        energy_lr=args.energy_lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_minutes_per_stage=args.max_minutes_per_stage,
        force_weight=args.force_weight,
        density_dipole_weight=args.density_dipole_weight,
        metric_cache_dir=args.metric_cache,
        progress=lambda msg: print(msg, flush=True),
    )
    print(json.dumps(result["metrics"], indent=1, default=str))
    print(f"model: {result['model_dir']} ({result['n_train']} train, {result['n_val']} held out)")


if __name__ == "__main__":
    main()
