"""The per-process cache of resident bases: each base loaded once, at most `size` of them."""
from __future__ import annotations

import threading
import time

from workers.caches import LRU


def test_concurrent_misses_on_one_key_load_it_once():
    cache: LRU[object] = LRU(2)
    loads = []

    def load():
        loads.append(1)
        time.sleep(0.2)  # a base takes long to load: the second miss arrives meanwhile
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("v2", load))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and got[0] is got[1] is got[2]


def test_the_least_recently_used_goes_first_and_room_is_made_before_loading():
    cache: LRU[str] = LRU(2)
    resident_during_load = []

    def load(name):
        def inner():
            resident_during_load.append(len(cache._items))
            return name
        return inner

    cache.get("v1", load("v1"))
    cache.get("v2", load("v2"))
    cache.get("v1", load("v1"))  # a hit: v1 is now the most recent
    cache.get("v3", load("v3"))
    assert "v2" not in cache and "v1" in cache and "v3" in cache
    assert resident_during_load == [0, 1, 1]  # v3 loaded with only one other base resident
    cache.drop("v1")
    assert "v1" not in cache and len(cache) == 1
