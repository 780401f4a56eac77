"""The side-by-side timing harness: every variant leads a round in turn, rounds go on while the
time floor is not reached (up to the ceiling), and each pass's own seconds are what is recorded."""
from __future__ import annotations

import torch

from prunesid_vlm.timing import clocked, rotated_rounds


def test_each_variant_leads_in_turn_and_its_own_seconds_are_kept():
    calls = []

    def variant(name, seconds):
        return lambda: (calls.append(name) or name, seconds)

    outputs, seconds, rounds = rotated_rounds([variant("a", 1.0), variant("b", 2.0), variant("c", 3.0)], repeats=3)
    assert rounds == 3 and outputs == ["a", "b", "c"]
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert seconds == [[1.0] * 3, [2.0] * 3, [3.0] * 3]


def test_rounds_go_on_until_the_time_floor_within_the_ceiling_and_report_progress():
    said = []
    slow = lambda: clocked(lambda: sum(range(20000)), torch.device("cpu"))  # noqa: E731
    _, seconds, rounds = rotated_rounds([slow, slow], repeats=1, min_seconds=60.0, max_repeats=4,
                                        progress=lambda fraction, text: said.append((fraction, text)))
    assert rounds == 4 and all(len(s) == 4 and min(s) > 0 for s in seconds)  # the ceiling stops it
    assert [t for _, t in said] == [f"timing pass {r} over 2 variants" for r in range(1, 5)]
    assert all(0 <= f < 1 for f, _ in said)
    _, _, rounds = rotated_rounds([slow], repeats=2, min_seconds=0.0, max_repeats=9)
    assert rounds == 2  # no floor: the planned rounds only
