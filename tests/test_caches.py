"""The pipeline's caches (cachetools' LRU bounded by entries and by bytes, with the journal a GPU
crossing hands back)."""
from __future__ import annotations

import torch

from prunesid_vlm.base_pipeline import _LRU


def _tensor(kib: int) -> torch.Tensor:
    return torch.zeros(kib * 256, dtype=torch.float32)  # kib KiB


def test_bounded_by_entries_and_bytes_least_recently_used_first_out():
    cache = _LRU(size=3, max_bytes=10 * 1024)
    for name in "abc":
        cache.put(name, _tensor(2))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", _tensor(2))  # four entries: the least recently used (b) goes
    assert set(cache) == {"a", "c", "d"}
    cache.put("e", _tensor(5))  # 2 + 2 + 2 + 5 KiB > 10: the least recently used go until it fits
    assert set(cache) == {"a", "d", "e"} and cache.currsize == 9 * 1024  # c went: a was used after it


def test_an_entry_larger_than_the_bound_is_not_kept_and_puts_are_journaled():
    cache = _LRU(size=4, max_bytes=4 * 1024)
    cache.put("small", _tensor(1))
    cache.journal = []
    cache.put("huge", _tensor(8))
    assert "huge" not in cache and "small" in cache  # refused alone; the rest stays
    cache.put("x", _tensor(1))
    assert [k for k, _ in cache.journal] == ["x"]  # what was kept is what the caller is told
    cache.journal = None
    cache.put("y", 1)
    assert "y" in cache and cache.get("missing") is None


def test_one_calls_entries_do_not_evict_each_other_and_reading_is_not_using():
    cache = _LRU(size=2)
    for name in "abcd":
        cache.put(name, name, keep=4)  # one call's four entries: the entry bound gives way
    assert set(cache) == set("abcd")
    cache.put("e", "e")
    assert set(cache) == {"d", "e"}  # the bound again, least recently used first
    cache.get("d")
    assert dict(cache.peek_items()) == {"d": "d", "e": "e"}
    cache.put("f", "f")
    assert set(cache) == {"d", "f"}  # peeking did not make e recent; the get made d recent


def test_a_batch_larger_than_the_feature_cache_is_encoded_once(llava_pipeline):
    from conftest import make_image

    from prunesid_vlm.pipeline import FEATURE_CACHE_SIZE

    pipe = llava_pipeline
    pipe.clear_caches()
    pictures = [make_image(300 + i, 48, 48) for i in range(FEATURE_CACHE_SIZE + 4)]
    pipe.encode(pictures)
    towers = pipe.stats["tower_images"]
    assert all(pipe.encode(pictures).cached)
    assert pipe.stats["tower_images"] == towers
