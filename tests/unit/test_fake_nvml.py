"""The fake NVML must not use a name, parameter or field that the real pynvml lacks."""

from __future__ import annotations

import ctypes
import inspect

import pynvml
import pytest

from gputuned.testing.fake_nvml import FakeNvml

FAKE = FakeNvml.with_gpus(1)
FAKE_FUNCTIONS = sorted(name for name, _ in inspect.getmembers(FakeNvml, inspect.isfunction) if name.startswith("nvml"))
FAKE_ATTRIBUTES = sorted(name for name in vars(FAKE) if name.startswith(("NVML", "nvml")))


def test_the_fake_implements_the_functions_the_collectors_call():
    assert len(FAKE_FUNCTIONS) >= 30


@pytest.mark.parametrize("name", FAKE_FUNCTIONS)
def test_every_fake_function_exists_in_pynvml_with_the_same_parameters(name):
    real = getattr(pynvml, name, None)
    assert real is not None, f"pynvml has no {name}"
    real_parameters = list(inspect.signature(real).parameters)
    fake_parameters = list(inspect.signature(getattr(FAKE, name)).parameters)
    assert fake_parameters == real_parameters, f"{name}: fake takes {fake_parameters}, pynvml takes {real_parameters}"


@pytest.mark.parametrize("name", FAKE_ATTRIBUTES)
def test_every_fake_constant_and_error_class_is_pynvml_own(name):
    assert getattr(FAKE, name) is getattr(pynvml, name) or getattr(FAKE, name) == getattr(pynvml, name)


def test_fake_errors_are_pynvml_error_classes_with_their_codes():
    assert FAKE.NVMLError is pynvml.NVMLError
    assert issubclass(FAKE.NVMLError_GpuIsLost, pynvml.NVMLError)
    assert pynvml.NVMLError_GpuIsLost().value == pynvml.NVML_ERROR_GPU_IS_LOST


def test_fake_results_are_pynvml_structs_with_the_real_fields():
    FAKE.nvmlInit()
    try:
        handle = FAKE.nvmlDeviceGetHandleByIndex(0)
        checks = [
            (FAKE.nvmlDeviceGetUtilizationRates(handle), pynvml.c_nvmlUtilization_t),
            (FAKE.nvmlDeviceGetMemoryInfo(handle), pynvml.c_nvmlMemory_t),
            (FAKE.nvmlDeviceGetMemoryInfo(handle, pynvml.nvmlMemory_v2), pynvml.c_nvmlMemory_v2_t),
            (FAKE.nvmlDeviceGetPciInfo(handle), pynvml.nvmlPciInfo_t),
        ]
        for value, struct in checks:
            assert type(value) is struct
        values = FAKE.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES])
        assert isinstance(values, ctypes.Array) and values._type_ is pynvml.c_nvmlFieldValue_t
        FAKE.gpus[0].processes[7] = 1024
        (process,) = FAKE.nvmlDeviceGetComputeRunningProcesses(handle)
        assert isinstance(process, pynvml.nvmlFriendlyObject)
        assert {name for name, _ in pynvml.c_nvmlProcessInfo_t._fields_} <= set(vars(process))
        (sample,) = FAKE.nvmlDeviceGetProcessUtilization(handle, 0)
        assert type(sample) is pynvml.c_nvmlProcessUtilizationSample_t
        # Functions that return text return str, as pynvml's convertStrBytes makes them.
        assert isinstance(FAKE.nvmlDeviceGetUUID(handle), str)
        # pynvml's _PrintableStructure decodes char arrays on attribute access; so does the fake's.
        assert isinstance(FAKE.nvmlDeviceGetPciInfo(handle).busId, str)
    finally:
        FAKE.gpus[0].processes.clear()
        FAKE.nvmlShutdown()


def test_text_functions_are_str_returning_in_pynvml_too():
    # pynvml decorates them with convertStrBytes (which decodes bytes); the fake returns str.
    for name in ("nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlSystemGetDriverVersion"):
        assert getattr(pynvml, name).__wrapped__ is not None


def test_fake_gpm_speaks_in_pynvml_own_structs():
    FAKE.nvmlInit()
    try:
        handle = FAKE.nvmlDeviceGetHandleByIndex(0)
        assert type(FAKE.nvmlGpmQueryDeviceSupport(handle)) is pynvml.c_nvmlGpmSupport_t
        first, second = FAKE.nvmlGpmSampleAlloc(), FAKE.nvmlGpmSampleAlloc()
        assert type(first) is pynvml.c_nvmlGpmSample_t
        FAKE.nvmlGpmSampleGet(handle, first)
        FAKE.nvmlGpmSampleGet(handle, second)
        request = pynvml.c_nvmlGpmMetricsGet_t(version=pynvml.NVML_GPM_METRICS_GET_VERSION, numMetrics=1)
        request.sample1, request.sample2 = first, second
        request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
        assert FAKE.nvmlGpmMetricsGet(request) is request
        assert request.metrics[0].nvmlReturn == pynvml.NVML_SUCCESS
        FAKE.nvmlGpmSampleFree(first)
        FAKE.nvmlGpmSampleFree(second)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            FAKE.nvmlGpmSampleFree(second)
        assert FAKE.nvmlDeviceGetMigMode(handle) == [pynvml.NVML_DEVICE_MIG_DISABLE] * 2
    finally:
        FAKE.nvmlShutdown()
