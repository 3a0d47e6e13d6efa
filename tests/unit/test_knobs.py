"""Knob validation: all-or-nothing, every refusal names the knob and the reason."""

from __future__ import annotations

import pytest

from gputuned.knobs import KnobError, KnobSpec, parse_assignments, validate_changes

SPECS = {
    "max_batch_size": KnobSpec("max_batch_size", 1, 1, 512),
    "streams": KnobSpec("streams", 1, 1, 16),
    "interop_threads": KnobSpec("interop_threads", 2, 1, 8, live=False),
}


def test_valid_changes_pass_through():
    assert validate_changes(SPECS, {"max_batch_size": 64, "streams": 2}) == {"max_batch_size": 64, "streams": 2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0 is below its minimum 1"),
        ({"streams": 17}, "streams=17 is above its maximum 16"),
        ({"streams": "2"}, "streams='2' is not an integer"),
        ({"streams": True}, "streams=True is not an integer"),
        ({"batch": 2}, "unknown knob 'batch'; known knobs: interop_threads, max_batch_size, streams"),
        ({"interop_threads": 4}, "interop_threads applies only at restart"),
        ({"device": 1}, "device applies only at restart"),
        ({}, "no knobs given"),
    ],
)
def test_refusals_name_the_knob_and_the_reason(changes, message):
    with pytest.raises(KnobError, match=message):
        validate_changes(SPECS, changes, restart_only={"device"})


def test_one_bad_knob_refuses_the_whole_set_and_names_every_problem():
    with pytest.raises(KnobError) as caught:
        validate_changes(SPECS, {"max_batch_size": 64, "streams": 0, "x": 1})
    assert "streams=0 is below its minimum 1" in str(caught.value)
    assert "unknown knob 'x'" in str(caught.value)


def test_parse_assignments():
    assert parse_assignments(["max_batch_size=8", "streams=2"]) == {"max_batch_size": 8, "streams": 2}
    with pytest.raises(KnobError, match="'streams' is not KNOB=VALUE"):
        parse_assignments(["streams"])
    with pytest.raises(KnobError, match="streams='two' is not an integer"):
        parse_assignments(["streams=two"])
