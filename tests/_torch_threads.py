"""Shared test fixture: torch on one thread for a whole test module.

Import it into a test module (``from tests._torch_threads import one_torch_thread``) and it
applies to every test there (autouse). One thread keeps CPU timings and float reductions
stable when several test processes share the machine's two cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` for the module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
