"""`densnet_core.allocator`: freed blocks stay in the process (measured in page faults).

Each check runs in a fresh interpreter, since the glibc setting is process-wide: five rounds of
allocating, touching and freeing 64 MB. With glibc's defaults every round maps fresh pages
and faults them in again (16,384 minor faults of 4 KiB pages, or ~550 with transparent huge
pages as on this machine); with :func:`retain_freed_memory` only the first round does.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "retain":
    from densnet_core.allocator import retain_freed_memory
    assert retain_freed_memory() is True
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 * 1024 * 1024, dtype=np.float32)  # 64 MB, every page touched
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults)))
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], check=True, capture_output=True, text=True
    )
    return [int(x) for x in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_freed_memory_is_reused_without_page_faults():
    default = _faults("default")
    retained = _faults("retain")
    first = default[0]
    assert first > 100  # 64 MB cannot fit in fewer pages (32 huge pages + the rest)
    assert min(default[1:]) > first // 2  # glibc's default: every round faults afresh
    assert retained[0] > first // 2  # the first round must fault its pages in
    assert max(retained[1:]) < first // 20  # later rounds reuse them


def test_non_linux_is_a_no_op(monkeypatch):
    from densnet_core import allocator

    allocator.retain_freed_memory.cache_clear()
    allocator._glibc.cache_clear()
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    try:
        assert allocator.retain_freed_memory() is False
    finally:
        allocator.retain_freed_memory.cache_clear()
        allocator._glibc.cache_clear()
