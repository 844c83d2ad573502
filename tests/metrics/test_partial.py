"""Saved per-sample progress: round trip, segments of new rows only, identity checks, damaged
segments, save cadence."""

from __future__ import annotations

import numpy as np
import pytest

from cleftgan_hpc.metrics.partial import PartialResults
from cleftgan_hpc.storage.base import ObjectStore


def ids(identity: str) -> dict[str, str]:
    """The same identity for every series these tests use."""
    return {name: identity for name in ("features", "scores", "x")}


def keys(store: ObjectStore, prefix: str) -> list[str]:
    return sorted(i.key for i in store.list(prefix + "/"))


def test_round_trip_in_order(store: ObjectStore) -> None:
    p = PartialResults(store, "eval/progress", ids("id-1"))
    assert not p.resumed and p.done("features") == 0
    p.extend("features", np.arange(6, dtype=np.float32).reshape(3, 2))
    p.extend("features", np.arange(6, 10, dtype=np.float32).reshape(2, 2))
    p.extend("scores", np.array([0.5, 0.25]))
    p.save()

    again = PartialResults(store, "eval/progress", ids("id-1"))
    assert again.resumed
    assert again.done("features") == 5 and again.done("scores") == 2
    np.testing.assert_array_equal(again.array("features"), np.arange(10, dtype=np.float32).reshape(5, 2))
    np.testing.assert_array_equal(again.array("scores"), [0.5, 0.25])
    again.discard()
    assert keys(store, "eval/progress") == []


def test_each_save_writes_only_the_new_rows(store: ObjectStore) -> None:
    p = PartialResults(store, "ev", ids("id"))
    p.extend("x", np.arange(3.0))
    p.save()
    p.save()  # nothing new: nothing written
    p.extend("x", np.arange(3.0, 5.0))
    p.save()
    assert keys(store, "ev") == ["ev/x-000000000000.npz", "ev/x-000000000003.npz"]
    sizes = {i.key: i.size for i in store.list("ev/")}
    assert sizes["ev/x-000000000003.npz"] < sizes["ev/x-000000000000.npz"]  # 2 rows, not 5
    np.testing.assert_array_equal(PartialResults(store, "ev", ids("id")).array("x"), np.arange(5.0))


def test_a_save_for_something_else_is_deleted_not_mixed_in(store: ObjectStore) -> None:
    p = PartialResults(store, "k", ids("network-a"))
    p.extend("features", np.ones((4, 2)))
    p.save()
    other = PartialResults(store, "k", ids("network-b"))
    assert not other.resumed and other.done("features") == 0
    assert keys(store, "k") == []
    other.extend("features", np.zeros((2, 2)))
    other.save()
    np.testing.assert_array_equal(PartialResults(store, "k", ids("network-b")).array("features"), np.zeros((2, 2)))


def test_a_damaged_segment_ends_the_series_there(store: ObjectStore) -> None:
    p = PartialResults(store, "k", ids("id"))
    for start in range(0, 6, 2):
        p.extend("x", np.arange(start, start + 2.0))
        p.save()
    store.put_bytes("k/x-000000000002.npz", b"PK\x03\x04 this is not a whole npz")
    again = PartialResults(store, "k", ids("id"))
    assert again.resumed and again.done("x") == 2  # rows 0-1 kept; 2-3 damaged; 4-5 follow a gap
    assert keys(store, "k") == ["k/x-000000000000.npz"]
    again.extend("x", np.arange(2.0, 6.0))
    again.save()
    np.testing.assert_array_equal(PartialResults(store, "k", ids("id")).array("x"), np.arange(6.0))


def test_maybe_save_waits_for_its_interval(store: ObjectStore) -> None:
    p = PartialResults(store, "k", ids("id"), every_s=3600)
    p.extend("x", np.zeros(3))
    assert not p.maybe_save() and keys(store, "k") == []
    eager = PartialResults(store, "k2", ids("id"), every_s=0.0)
    eager.extend("x", np.zeros(3))
    assert eager.maybe_save() and keys(store, "k2") == ["k2/x-000000000000.npz"]


def test_series_have_their_own_identities(store: ObjectStore) -> None:
    p = PartialResults(store, "k", {"a": "lpips-1", "b": "inception-1"})
    p.extend("a", np.ones(3))
    p.extend("b", np.ones(3))
    p.save()
    again = PartialResults(store, "k", {"a": "lpips-2", "b": "inception-1"})  # only a's model changed
    assert again.done("a") == 0 and again.done("b") == 3
    assert keys(store, "k") == ["k/b-000000000000.npz"]


def test_truncate_cuts_memory_and_store_back(store: ObjectStore) -> None:
    p = PartialResults(store, "k", ids("id"))
    for start in range(0, 9, 3):
        p.extend("x", np.arange(start, start + 3.0))
        p.save()
    p.truncate("x", 4)  # inside the second segment: it goes, the first stays
    assert p.done("x") == 4 and keys(store, "k") == ["k/x-000000000000.npz"]
    p.save()  # rows 3..4 go up again
    np.testing.assert_array_equal(PartialResults(store, "k", ids("id")).array("x"), np.arange(4.0))
    with pytest.raises(KeyError, match="unknown series"):
        p.extend("unknown", np.zeros(1))
