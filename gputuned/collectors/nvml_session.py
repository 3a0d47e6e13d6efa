"""One NVML initialisation shared by the nvml and pcie collectors, and the error seam.

pynvml raises one NVMLError subclass per return code. This module is the only place that
looks at them: it maps each to what the collectors must do about it (skip a field, drop
a GPU for this tick, or treat NVML as gone), so the collectors never see an NVMLError.
After the library vanishes the session re-opens itself, at most every `retry_seconds`, so
a driver that comes back is picked up without a restart. A lost GPU is reported on its own
and does not blind the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gputuned.procfs import ParseError, nvml_bus_id_to_sysfs, parse_int_file, read_text
from gputuned.samples import Collected

log = logging.getLogger(__name__)


class NvmlProblem(Exception):
    """Base of the errors this seam raises instead of pynvml's NVMLError family."""


class NvmlUnavailable(NvmlProblem):
    """The library or driver is missing or not initialised: no GPU can be read."""


class GpuLost(NvmlProblem):
    """One GPU fell off the bus or needs a reset; the others may still answer."""


class FieldUnsupported(NvmlProblem):
    """This GPU or driver does not offer this reading (or we may not read it)."""


class NoEvent(NvmlProblem):
    """An event set had nothing to report within the wait (NVML_ERROR_TIMEOUT)."""


class CountersHeld(NvmlProblem):
    """Another client owns what this reading needs (NVML_ERROR_IN_USE): a profiler such as
    DCGM's profiling module or Nsight holds the GPU's performance counters."""


class NoData(NvmlProblem):
    """Nothing new to report since the given timestamp (NVML_ERROR_NOT_FOUND / NO_DATA)."""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """A GPU found at open time, with its identity (which does not change while open)."""

    index: int
    handle: Any
    uuid: str
    name: str
    pci_bus_id: str  # NVML's form, '00000000:3B:00.0'
    sysfs_bdf: str  # '0000:3b:00.0', the name under /sys/bus/pci/devices
    numa_node: int  # -1 when the platform does not say


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class NvmlSession:
    """Opens NVML on first use, lists the GPUs, and performs reads through the error seam."""

    def __init__(
        self,
        nvml: ModuleType,
        sys_root: Path,
        retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._sys_root = sys_root
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._devices: list[GpuDevice] | None = None
        self._generation = 0
        self._open_problems: list[str] = []
        self._driver_version = ""
        self._last_attempt: float | None = None
        self._last_failure = ""
        self._unsupported: set[tuple[int, str, str]] = set()  # (gpu, function, repr(args))
        self._code_to_problem = self._build_error_map(nvml)

    @staticmethod
    def _build_error_map(nvml: ModuleType) -> dict[int, type[NvmlProblem]]:
        groups = {
            NvmlUnavailable: ("UNINITIALIZED", "LIBRARY_NOT_FOUND", "DRIVER_NOT_LOADED", "LIB_RM_VERSION_MISMATCH"),
            GpuLost: ("GPU_IS_LOST", "GPU_NOT_FOUND", "RESET_REQUIRED"),
            FieldUnsupported: ("NOT_SUPPORTED", "NO_PERMISSION", "FUNCTION_NOT_FOUND", "ARGUMENT_VERSION_MISMATCH"),
            NoEvent: ("TIMEOUT",),
            NoData: ("NOT_FOUND", "NO_DATA"),
            CountersHeld: ("IN_USE",),
        }
        mapping: dict[int, type[NvmlProblem]] = {}
        for problem, names in groups.items():
            for name in names:
                code = getattr(nvml, f"NVML_ERROR_{name}", None)
                if code is not None:
                    mapping[code] = problem
        return mapping

    @property
    def driver_version(self) -> str:
        return self._driver_version

    @property
    def generation(self) -> int:
        """Counts successful opens: NVML objects from an older generation are invalid."""
        return self._generation

    @property
    def open_problems(self) -> list[str]:
        """GPUs that NVML counted but that could not be described when it was opened."""
        return list(self._open_problems)

    def _problem(self, exc: Exception, what: str) -> NvmlProblem:
        kind = self._code_to_problem.get(getattr(exc, "value", -1), NvmlProblem)
        return kind(f"{what}: {exc}")

    def devices(self) -> list[GpuDevice]:
        """The GPUs, opening NVML if needed; raises NvmlUnavailable when it cannot be opened."""
        if self._devices is not None:
            return self._devices
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self._retry_seconds:
            raise NvmlUnavailable(self._last_failure)
        self._last_attempt = now
        try:
            self._devices = self._open()
        except NvmlProblem as exc:
            self._last_failure = str(exc)
            raise NvmlUnavailable(self._last_failure) from None
        self._generation += 1
        return self._devices

    def bus_ids(self) -> dict[int, str]:
        """GPU index -> sysfs BDF, or {} while NVML is unavailable (never raises)."""
        try:
            return {device.index: device.sysfs_bdf for device in self.devices()}
        except NvmlUnavailable:
            return {}

    def _open(self) -> list[GpuDevice]:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise self._problem(exc, "nvmlInit") from None
        try:
            self._driver_version = _as_text(nvml.nvmlSystemGetDriverVersion())
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._shutdown()
            raise self._problem(exc, "listing GPUs") from None
        devices = []
        self._open_problems = []
        for index in range(count):
            try:
                devices.append(self._describe(index))
            except (nvml.NVMLError, ParseError) as exc:
                self._open_problems.append(f"GPU {index} could not be opened: {exc}")
        log.info("NVML opened: driver %s, %d GPU(s)", self._driver_version, len(devices))
        return devices

    def _describe(self, index: int) -> GpuDevice:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        bus_id = _as_text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        sysfs_bdf = nvml_bus_id_to_sysfs(bus_id)
        return GpuDevice(
            index=index,
            handle=handle,
            uuid=_as_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_as_text(nvml.nvmlDeviceGetName(handle)),
            pci_bus_id=bus_id,
            sysfs_bdf=sysfs_bdf,
            numa_node=read_pci_numa_node(self._sys_root, sysfs_bdf),
        )

    def read(self, device: GpuDevice, function: str, *args: Any) -> Any:
        """Calls `nvml.<function>(device.handle, *args)` through the error seam.

        Raises FieldUnsupported (remembered, so an unsupported reading costs one NVML
        call per session, not one per tick), GpuLost, NvmlUnavailable (which makes the
        session re-open later), or NvmlProblem for anything else.
        """
        key = (device.index, function, repr(args))
        if key in self._unsupported:
            raise FieldUnsupported(f"GPU {device.index}: {function} is not supported")
        try:
            return getattr(self._nvml, function)(device.handle, *args)
        except self._nvml.NVMLError as exc:
            problem = self._problem(exc, f"GPU {device.index}: {function}")
        if isinstance(problem, FieldUnsupported):
            self._unsupported.add(key)
        elif isinstance(problem, NvmlUnavailable):
            self.reset()
        raise problem

    def read_or_note(self, notes: list[str], device: GpuDevice, function: str, *args: Any) -> Any:
        """A reading that some GPUs or drivers lack: None, and a note saying so, when unsupported."""
        try:
            return self.read(device, function, *args)
        except FieldUnsupported as exc:
            notes.append(str(exc))
            return None

    def mig_enabled(self, device: GpuDevice) -> bool:
        """Whether MIG is on for this GPU (a GPU without MIG says it is not supported)."""
        try:
            current, _pending = self.read(device, "nvmlDeviceGetMigMode")
        except FieldUnsupported:
            return False
        return bool(current == self._nvml.NVML_DEVICE_MIG_ENABLE)

    def call(self, function: str, *args: Any) -> Any:
        """Calls a device-less NVML function (event sets) through the same error seam."""
        try:
            return getattr(self._nvml, function)(*args)
        except self._nvml.NVMLError as exc:
            raise self._problem(exc, function) from None

    def reset(self) -> None:
        """Forgets the devices; the next `devices()` re-opens NVML (after the retry delay)."""
        if self._devices is not None:
            self._shutdown()
        self._devices = None
        self._unsupported.clear()

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)

    def close(self) -> None:
        self.reset()


def read_pci_numa_node(sys_root: Path, bdf: str) -> int:
    """The NUMA node the kernel reports for a PCI device, -1 when unknown or unreadable."""
    try:
        return parse_int_file(read_text(sys_root, "bus", "pci", "devices", bdf, "numa_node"))
    except (OSError, ParseError):
        return -1


def collect_per_gpu(session: NvmlSession, collect_one: Callable[[GpuDevice, Collected], None]) -> Collected:
    """Runs `collect_one` for every GPU; a problem with one GPU is an error for that GPU only,
    a vanished library ends the tick. Shared by the nvml and pcie collectors."""
    out = Collected()
    try:
        devices = session.devices()
    except NvmlUnavailable as exc:
        out.errors.append(f"NVML unavailable: {exc}")
        return out
    out.errors.extend(session.open_problems)
    for device in devices:
        try:
            collect_one(device, out)
        except NvmlUnavailable as exc:
            out.errors.append(f"NVML unavailable: {exc}")
            break
        except NvmlProblem as exc:
            out.errors.append(str(exc))
    return out
