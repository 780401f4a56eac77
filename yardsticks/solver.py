"""Run a selection on a chosen CPU eigensolver (the benchmarks' library yardstick)."""
from __future__ import annotations

from typing import Callable

from prunesid._eigen import solve


def on_solver(name: str, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the process-wide eigensolver set to ``name`` meanwhile, and put back after."""

    def with_solver() -> object:
        previous, solve.SOLVER = solve.SOLVER, name
        try:
            return run()
        finally:
            solve.SOLVER = previous

    return with_solver
