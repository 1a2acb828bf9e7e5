"""``densnet run [CONFIG]``: the whole pipeline on the bundled demo (or a config file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densnet.console import fail, say, status_line


def run(
    config: Annotated[
        Path | None,
        typer.Argument(help="Pipeline TOML file [default: the bundled demo, densnet/demo]."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Override the config's output_dir.")
    ] = None,
) -> None:
    """Label a seed set, fine-tune the density model, screen a candidate library.

    With no PREFECT_API_URL configured, Prefect runs on a temporary local server: nothing to
    start by hand. Rerunning redoes nothing that is finished.
    """
    t0 = time.perf_counter()
    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()
    from flows.pipeline import DEMO_CONFIG, load_config, pipeline_flow

    path = config or DEMO_CONFIG
    if not path.exists():
        raise fail(f"config {path} does not exist")
    try:
        cfg = load_config(path)
    except Exception as exc:
        raise fail(f"config {path}: {exc}") from None
    if output_dir is not None:
        cfg = cfg.model_copy(update={"output_dir": str(output_dir)})
    if boot is not None:
        boot.join()
    say(f"densnet run: {cfg.name} → {cfg.output_dir}")
    try:
        summary = pipeline_flow(config=cfg)
    except Exception as exc:
        raise fail(f"the pipeline failed: {type(exc).__name__}: {exc}", code=1) from None
    seconds = time.perf_counter() - t0
    say(f"finished in {seconds:.0f} s")
    for stage, secs in summary["timings_seconds"].items():
        say(f"  {stage:<10} {secs:7.1f} s")
    label_counts = status_line(summary["label"]["status_counts"])
    say(f"seed labels:  {Path(cfg.output_dir) / 'labels'}  ({label_counts})")
    say(f"model:        {summary['model_dir']}")
    screen = summary["screen"]
    say(f"predictions:  {summary['predictions']}  ({status_line(screen.get('status_counts', {}))})")
    say("open them with:")
    say(f"  python -c \"import pandas as pd; print(pd.read_parquet('{summary['predictions']}'))\"")
    if "note" in summary:
        say(f"note: {summary['note']}")
