"""Timing side by side: the harness behind every speed figure the pipeline reports (the prefill
medians of a comparison, the in-LLM study's passes). Machines are noisy, so variants are timed in
rounds, each round in a rotated order so that each variant leads in turn, and read together."""
from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

import torch

from .generation import synchronize

T = TypeVar("T")


def clocked(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall-clock seconds, queued GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def rotated_rounds(passes: Sequence[Callable[[], tuple[T, float]]], *, repeats: int = 1, min_seconds: float = 0.0,
                   max_repeats: int = 1, progress: Callable[[float, str], None] | None = None
                   ) -> tuple[list[T], list[list[float]], int]:
    """Rounds over ``passes`` (each returns its output and the seconds to count for it), round ``r``
    starting at pass ``r mod P``: at least ``repeats`` rounds, and more (up to ``max_repeats``) while
    all rounds together have taken under ``min_seconds``.

    Returns each pass's last output, its seconds per round, and the number of rounds.
    ``progress(fraction, text)`` is called once per round, never between two timed passes: what it
    sets off (a page redrawing its progress bar) would land on the next pass's clock."""
    outputs: list = [None] * len(passes)
    seconds: list[list[float]] = [[] for _ in passes]
    planned, started, rounds = max(1, repeats), time.perf_counter(), 0
    while rounds < planned or (rounds < max_repeats and time.perf_counter() - started < min_seconds):
        if progress is not None:
            elapsed = (time.perf_counter() - started) / min_seconds if min_seconds > 0 else 0.0
            progress(min(0.99, max(rounds / planned, elapsed)), f"timing pass {rounds + 1} over {len(passes)} variants")
        lead = rounds % len(passes)
        for index in list(range(lead, len(passes))) + list(range(lead)):
            outputs[index], spent = passes[index]()
            seconds[index].append(spent)
        rounds += 1
    return outputs, seconds, rounds
