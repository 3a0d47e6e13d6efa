"""The tuner's modes, named once: the config, the CLI, the guard and the metrics all use these."""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    AUTO = "auto"  # try changes, keep what helps
    RECOMMEND = "recommend"  # a dry run: log what would be tried, change nothing
    FROZEN = "frozen"  # leave every knob alone


MODE_NAMES = tuple(mode.value for mode in Mode)
