"""Knobs <-> a Triton model config (pure).

The adapter offers the catalogue's knobs (`gputuned.knobs`) that the built-in worker
offers too, so every tuner applies unchanged; Triton's narrower upper bounds are set here:

- `max_batch_size`: the config's `max_batch_size`, the largest batch Triton's dynamic
  batcher forms (and the largest request it accepts). A config without `dynamic_batching`
  executes every request alone, so its batch knob reads 1 whatever `max_batch_size` says.
- `max_queue_delay_us`: `dynamic_batching.max_queue_delay_microseconds`.
- `streams`: the `count` of every `instance_group` entry: model instances per device (per
  listed GPU for KIND_GPU), the batches Triton runs at once, as lanes are for the worker.

A change of the batch or the delay turns dynamic batching on and sets
`preferred_batch_size` to the new maximum: what Triton fills in itself when dynamic batching
has no preferred size, so batches fill up to `max_batch_size` (a smaller preferred size left
in place would cap them). A change of `streams` alone leaves batching as it is. Everything
else stays as Triton reported it. A model whose config says `max_batch_size: 0` does not
batch; it gets only `streams`.

A load whose config differs from the running one only in `instance_group` is an in-place
instance update: Triton adds or removes instances beside the ones serving. Under a steady
load that update can wait for tens of seconds or indefinitely, and every load after it
queues behind it (Triton 2.51's Python backend at batches of one and two: it often finished
only when the load paused).
`for_load` therefore makes every instance-count change a full reload, as a batch change is
already, which Triton performs beside the serving version whatever the load: a model
parameter of gputuned's own (`RELOAD_PARAMETER`) changes with it. The parameter lives in
Triton's running config only: write-back leaves it out (`without_reload_parameter`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gputuned.knobs import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, STREAMS, KnobSpec

BATCH = MAX_BATCH_SIZE.name
DELAY = MAX_QUEUE_DELAY_US.name
INSTANCES = STREAMS.name

BATCH_LIMIT = 128  # Model Analyzer's brute grid reaches 128
DELAY_LIMIT_US = 100_000
INSTANCES_LIMIT = 8
# A model config parameter whose new value makes an instance-count change a full reload.
RELOAD_PARAMETER = "gputuned_reload"


def batches(config: Mapping[str, Any]) -> bool:
    """Whether the model takes a batch dimension at all (max_batch_size > 0)."""
    return int(config.get("max_batch_size") or 0) > 0


def knob_specs(config: Mapping[str, Any], maximum_batch: int = BATCH_LIMIT) -> dict[str, KnobSpec]:
    """The knobs this model's config allows, with its present values as defaults (a value
    the operator set above our limit raises the limit to it)."""
    values = knobs_of(config)
    specs = {INSTANCES: STREAMS.spec(values[INSTANCES], maximum=max(INSTANCES_LIMIT, values[INSTANCES]))}
    if batches(config):
        specs[BATCH] = MAX_BATCH_SIZE.spec(values[BATCH], maximum=max(maximum_batch, values[BATCH]))
        specs[DELAY] = MAX_QUEUE_DELAY_US.spec(values[DELAY], maximum=max(DELAY_LIMIT_US, values[DELAY]))
    return specs


def knobs_of(config: Mapping[str, Any]) -> dict[str, int]:
    """The knob values a config amounts to (see the module docstring)."""
    groups = config.get("instance_group") or [{}]
    values = {INSTANCES: max(int(groups[0].get("count") or 1), 1)}
    if batches(config):
        dynamic = config.get("dynamic_batching")
        values[BATCH] = int(config["max_batch_size"]) if dynamic is not None else 1
        values[DELAY] = int((dynamic or {}).get("max_queue_delay_microseconds") or 0)
    return values


def instances(config: Mapping[str, Any]) -> int:
    """Model instances in all (each group's count on each GPU it lists): the batches Triton can
    run at once, the worker's lanes."""
    return sum(
        int(group.get("count") or 1) * max(len(group.get("gpus") or ()), 1) for group in config.get("instance_group") or [{}]
    )


def with_knobs(config: Mapping[str, Any], knobs: Mapping[str, int]) -> dict[str, Any]:
    """A copy of `config` with the knobs in `knobs` changed (see the module docstring)."""
    result = copy.deepcopy(dict(config))
    if INSTANCES in knobs:
        groups = result.get("instance_group") or [{"kind": "KIND_AUTO"}]
        result["instance_group"] = [{**group, "count": knobs[INSTANCES]} for group in groups]
    if batches(config) and (BATCH in knobs or DELAY in knobs):
        current = knobs_of(config)
        size = knobs.get(BATCH, current[BATCH])
        dynamic = dict(result.get("dynamic_batching") or {})
        dynamic["max_queue_delay_microseconds"] = knobs.get(DELAY, current[DELAY])
        dynamic["preferred_batch_size"] = [size]
        result["dynamic_batching"] = dynamic
        result["max_batch_size"] = size
    return result


def for_load(running: Mapping[str, Any], knobs: Mapping[str, int]) -> dict[str, Any]:
    """The config a load request sends for `knobs`: `with_knobs`, and RELOAD_PARAMETER counted
    up where the instance count changes (see the module docstring)."""
    new = with_knobs(running, knobs)
    if instances(new) == instances(running):
        return new
    parameters = dict(new.get("parameters") or {})
    done = str((parameters.get(RELOAD_PARAMETER) or {}).get("string_value", "0"))
    parameters[RELOAD_PARAMETER] = {"string_value": str(int(done) + 1 if done.isdigit() else 1)}
    return {**new, "parameters": parameters}


def without_reload_parameter(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` without RELOAD_PARAMETER (and without `parameters` if that was its only one)."""
    result = dict(config)
    parameters = {key: value for key, value in (config.get("parameters") or {}).items() if key != RELOAD_PARAMETER}
    if parameters:
        result["parameters"] = parameters
    else:
        result.pop("parameters", None)
    return result
