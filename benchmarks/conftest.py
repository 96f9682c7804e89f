"""pytest-benchmark suites; run only when asked: ``pytest benchmarks/`` (never part of ``pytest``)."""
from __future__ import annotations

import pytest

import nativemem


def backend_names():
    return [b.name for b in nativemem.backends() if b.available]


@pytest.fixture(params=backend_names() + ["arena"])
def allocator(request):
    if request.param == "arena":
        return nativemem.Arena(64 << 20)
    return nativemem.allocator(request.param)
