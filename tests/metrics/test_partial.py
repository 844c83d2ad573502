"""Saved per-sample progress: round trip, identity checks, corrupt saves, save cadence."""

from __future__ import annotations

import numpy as np

from cleftgan_hpc.metrics.partial import PartialResults
from cleftgan_hpc.storage.base import ObjectStore


def test_round_trip_in_order(store: ObjectStore) -> None:
    p = PartialResults(store, "eval/progress.npz", "id-1")
    assert not p.resumed and p.done("features") == 0
    p.extend("features", np.arange(6, dtype=np.float32).reshape(3, 2))
    p.extend("features", np.arange(6, 10, dtype=np.float32).reshape(2, 2))
    p.extend("scores", np.array([0.5, 0.25]))
    p.save()

    again = PartialResults(store, "eval/progress.npz", "id-1")
    assert again.resumed
    assert again.done("features") == 5 and again.done("scores") == 2
    np.testing.assert_array_equal(again.array("features"), np.arange(10, dtype=np.float32).reshape(5, 2))
    np.testing.assert_array_equal(again.array("scores"), [0.5, 0.25])
    again.discard()
    assert not store.exists("eval/progress.npz")


def test_a_save_for_something_else_is_ignored(store: ObjectStore) -> None:
    p = PartialResults(store, "k.npz", "network-a")
    p.extend("features", np.ones((4, 2)))
    p.save()
    other = PartialResults(store, "k.npz", "network-b")
    assert not other.resumed and other.done("features") == 0


def test_a_corrupt_save_is_recomputed_not_trusted(store: ObjectStore) -> None:
    store.put_bytes("k.npz", b"PK\x03\x04 this is not a whole npz")
    p = PartialResults(store, "k.npz", "id")
    assert not p.resumed and p.done("features") == 0


def test_maybe_save_waits_for_its_interval(store: ObjectStore) -> None:
    p = PartialResults(store, "k.npz", "id", every_s=3600)
    p.extend("x", np.zeros(3))
    assert not p.maybe_save() and not store.exists("k.npz")
    eager = PartialResults(store, "k2.npz", "id", every_s=0.0)
    eager.extend("x", np.zeros(3))
    assert eager.maybe_save() and store.exists("k2.npz")
