"""Writing the accepted knobs back into a model's `config.pbtxt` (`triton_write_back`).

gputuned applies a knob by reloading the model with a config passed in the load request,
which Triton does not write to the repository: a Triton restarted by its owner, or a
repository copied to another host, would come back with the old values. With write-back on,
each accepted set of knobs (a kept trial, a hand set; never a trial) is written into the
model's `config.pbtxt`:

- only the knob fields change; the rest is the operator's file as written, not the
  auto-completed config Triton reports (a file that leaves `max_batch_size` to Triton's
  auto-complete gets the value Triton runs with, so the batch knobs have a place to go);
  the file is rewritten through the protobuf schema, so its comments and layout are not kept;
- the previous file is kept beside it as `config.pbtxt.previous`, and both are replaced
  atomically (a temporary file in the same directory, flushed to disk, renamed over), so
  Triton's repository poller and a crash mid-write see one whole file or the other.

Text format cannot be written correctly without the schema (an enum is a bare word, a string
is quoted), and the schema ships with tritonclient: the `triton` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gputuned.triton import model_config

CONFIG_FILE = "config.pbtxt"
PREVIOUS_SUFFIX = ".previous"
SCHEMA_MODULE = "gputuned.triton._model_config_pb2"  # tritonclient's model_config_pb2, loaded on its own
SCHEMA_MISSING = (
    "triton_write_back needs the schema of Triton's model config, which ships with tritonclient: pip install 'gputuned[triton]'"
)


class WriteBackError(Exception):
    """The config could not be read, converted or written; the message says which and why."""


class ConfigFile:
    """One model's `config.pbtxt` in a repository the adapter may write. Building it checks
    that the schema is importable (no file I/O), so a missing extra is said at start."""

    def __init__(self, repository: Path, model: str) -> None:
        try:
            from google.protobuf import json_format, text_format
        except ImportError:
            raise WriteBackError(SCHEMA_MISSING) from None
        self.path = repository / model / CONFIG_FILE
        self._schema = _model_config_schema()
        self._json_format = json_format
        self._text_format = text_format

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + PREVIOUS_SUFFIX)

    def read(self) -> dict[str, Any]:
        """The file as a config dict (Triton's JSON field names); {} when there is none."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise WriteBackError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            parsed = self._text_format.Parse(text, self._schema())
        except self._text_format.ParseError as exc:
            raise WriteBackError(f"{self.path} is not a valid model config: {exc}") from None
        config: dict[str, Any] = self._json_format.MessageToDict(parsed, preserving_proto_field_name=True)
        return config

    def write_back(self, knobs: Mapping[str, int], running: Mapping[str, Any]) -> bool:
        """Writes `knobs` into the file; `running` is the config Triton reports now. False when
        the file already holds them (nothing is written)."""
        written = self.read()
        if model_config.batches(running) and "max_batch_size" not in written:
            written["max_batch_size"] = running["max_batch_size"]
        if written and model_config.knobs_of(written) == {**model_config.knobs_of(written), **knobs}:
            return False
        new = model_config.with_knobs(written or model_config.without_reload_parameter(running), knobs)
        try:
            text = self._text_format.MessageToString(self._json_format.ParseDict(new, self._schema()))
        except self._json_format.ParseError as exc:
            raise WriteBackError(f"the new config for {self.path} does not fit Triton's schema: {exc}") from None
        try:
            if self.path.exists():
                _replace(self.previous, self.path.read_text(), like=self.path)
            _replace(self.path, text, like=self.path if self.path.exists() else None)
        except OSError as exc:
            raise WriteBackError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return True


def _model_config_schema() -> Any:
    """tritonclient's ModelConfig message class, from its model_config_pb2 alone. Importing it
    the usual way runs `tritonclient.grpc`'s __init__, which also registers the gRPC service's
    definitions, and those clash in one process with any other copy of the KServe protocol
    (kserve's own, for one). WriteBackError when tritonclient is not installed."""
    loaded = sys.modules.get(SCHEMA_MODULE)
    if loaded is None:
        package = importlib.util.find_spec("tritonclient")
        locations = package.submodule_search_locations if package is not None else None
        if not locations:
            raise WriteBackError(SCHEMA_MISSING)
        source = Path(next(iter(locations))) / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location(SCHEMA_MODULE, source)
        if spec is None or spec.loader is None or not source.exists():
            raise WriteBackError(SCHEMA_MISSING)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        sys.modules[SCHEMA_MODULE] = loaded
    return loaded.ModelConfig


def _replace(path: Path, text: str, like: Path | None) -> None:
    """Writes `text` to `path` atomically, with the permission bits of `like` when given."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if like is not None:
            shutil.copymode(like, temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
