"""Knob validation: all-or-nothing, every refusal names the knob and the reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gputuned.knobs import (
    CATALOGUE,
    MAX_BATCH_SIZE,
    POOL_MB,
    KnobError,
    KnobSpec,
    memory_bound,
    parse_assignments,
    validate_changes,
)
from gputuned.triton.model_config import knob_specs
from tests.dashboard_queries import DASHBOARD_DIR

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


# --- the catalogue --------------------------------------------------------------------------


def test_every_catalogue_knob_is_declared_whole():
    for name, knob in CATALOGUE.items():
        assert knob.name == name and knob.title and knob.unit and knob.description and knob.kinds
        assert knob.maximum is None or knob.minimum <= knob.maximum


def test_a_knob_the_catalogue_leaves_to_the_machine_needs_its_maximum():
    with pytest.raises(ValueError, match="pool_mb"):
        POOL_MB.spec(0)
    assert POOL_MB.spec(0, maximum=4096) == KnobSpec("pool_mb", 0, 0, 4096, True, POOL_MB.description, "Pool size", "MiB")


def test_tritons_knobs_are_the_catalogues_with_tritons_narrower_bounds():
    config = {"max_batch_size": 8, "dynamic_batching": {}, "instance_group": [{"count": 1}]}
    specs = knob_specs(config)
    assert set(specs) == {name for name, knob in CATALOGUE.items() if "triton" in knob.kinds}
    for name, spec in specs.items():
        assert (spec.title, spec.unit, spec.description) == (
            CATALOGUE[name].title,
            CATALOGUE[name].unit,
            CATALOGUE[name].description,
        )
    assert specs["max_batch_size"].maximum == 128


def test_a_hello_from_a_worker_older_than_the_catalogue_is_shown_with_the_catalogues_words():
    old = {"type": "int", "value": 4, "min": 1, "max": 64, "live": True, "description": ""}
    spec = KnobSpec.from_wire("max_batch_size", old)
    assert (spec.title, spec.unit, spec.description) == ("Max batch size", "items", MAX_BATCH_SIZE.description)
    own = KnobSpec.from_wire("beam_width", {**old, "description": "beams searched", "title": "Beam width"})
    assert (own.title, own.unit, own.description) == ("Beam width", "", "beams searched")
    assert KnobSpec.from_wire(own.name, own.to_wire(4)) == replace(own, default=4)


def test_only_the_memory_bound_knobs_learn_a_ceiling_from_out_of_memory():
    assert [name for name in CATALOGUE if memory_bound(name)] == ["max_batch_size", "max_batch_tokens"]
    assert not memory_bound("a_knob_an_agent_declared")


def test_the_tuning_dashboard_has_a_panel_for_every_live_knob_and_none_for_restart_only_ones():
    board = (DASHBOARD_DIR / "gputuned-tuning.json").read_text()  # equal to a fresh build: test_dashboards.py
    for name, knob in CATALOGUE.items():
        assert (f'knob=\\"{name}\\"' in board) == knob.live, name
