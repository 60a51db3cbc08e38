"""The readers every list and prune filter shares (engine/filters.py, units.py)."""

from __future__ import annotations

import time

import pytest

from berth.engine.filters import label_matches, until_epoch, values
from berth.errors import InvalidArgument
from berth.units import rfc3339_epoch


def test_rfc3339_epoch_reads_fractions_offsets_and_nothing() -> None:
    assert rfc3339_epoch("1970-01-01T00:01:40Z") == 100.0
    assert rfc3339_epoch("1970-01-01T00:01:40.250000000Z") == 100.25
    assert rfc3339_epoch("1970-01-01T01:01:40+01:00") == 100.0
    assert rfc3339_epoch("1970-01-01T00:00:00.5-00:30") == 1800.5
    for nothing in ("", None, "0001-01-01T00:00:00Z", "yesterday", "1970-13-01T00:00:00Z"):
        assert rfc3339_epoch(nothing) == 0.0


def test_until_takes_unix_seconds_dates_and_durations() -> None:
    assert until_epoch("100") == 100.0
    assert until_epoch("1970-01-02") == 86400.0
    assert until_epoch("1970-01-01T00:01:40Z") == 100.0
    assert abs(until_epoch("10m") - (time.time() - 600)) < 5
    assert abs(until_epoch("1h30m") - (time.time() - 5400)) < 5
    with pytest.raises(InvalidArgument, match="invalid until"):
        until_epoch("last week")


def test_labels_and_both_filter_shapes() -> None:
    assert label_matches({"a": "1"}, "a") and label_matches({"a": "1"}, "a=1")
    assert not label_matches({"a": "1"}, "a=2") and not label_matches({}, "a")
    assert values({"label": {"a=1": True, "b": False}}, "label") == ["a=1"]
    assert values({"label": ["a=1"]}, "label") == ["a=1"]
    assert values({}, "label") == []
