"""Typed settings read once from the environment (prefix ``DENSNET_``) or a ``.env`` file.

Use :func:`get_settings` rather than reading ``os.environ`` in modules.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "densnet"


class DensnetSettings(BaseSettings):
    """Machine-level settings.

    Attributes
    ----------
    cache_dir
        Where computed free-atom priors and other reusable results are kept.
    workers
        Default number of parallel workers (processes or Prefect tasks); 0 = all cores.
    pyscf_threads
        OpenMP threads per PySCF calculation; 0 = all cores of the worker.
    pyscf_max_memory_mb
        PySCF ``max_memory`` per calculation, MB.
    model_dir
        Density model used by ``densnet predict`` when ``--model`` is not given;
        None = the model shipped with the package.
    """

    model_config = SettingsConfigDict(env_prefix="DENSNET_", env_file=".env", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    workers: int = Field(default=0, ge=0)
    pyscf_threads: int = Field(default=0, ge=0)
    pyscf_max_memory_mb: int = Field(default=4000, ge=200)
    model_dir: Path | None = None

    def n_workers(self) -> int:
        """Resolved worker count (``workers``, or the usable cores when 0)."""
        return self.workers or available_cores()


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def get_settings() -> DensnetSettings:
    """The process-wide settings (read once)."""
    return DensnetSettings()
