"""TenSafe projections: the DuckDB read model of the ledger, live projectors, replay, compliance SQL.

Public API (imported lazily, so `tensafe --help` does not load DuckDB):

* ``ReadModel``, ``RawRecord``, ``ChainBroken``, ``ApplyResult``, ``Position`` (readmodel)
* ``rebuild``, ``arebuild``, ``rebuild_from_file``, ``catch_up``, ``apply_snapshot`` (replay)
* ``run_projector``, ``run_faust_projector``, ``FaustProjector`` (projector)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReadModel": "readmodel",
    "RawRecord": "readmodel",
    "ChainBroken": "readmodel",
    "ApplyResult": "readmodel",
    "Position": "readmodel",
    "rebuild": "replay",
    "arebuild": "replay",
    "rebuild_from_file": "replay",
    "catch_up": "replay",
    "apply_snapshot": "replay",
    "run_projector": "projector",
    "run_faust_projector": "projector",
    "FaustProjector": "projector",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tensafe.projections' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tensafe.projections.{module}"), name)
