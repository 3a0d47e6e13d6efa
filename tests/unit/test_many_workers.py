"""Several workers on one host: their definitions, where each runs, and their trial turns (pure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gputuned.collectors.nvml_session import NvmlSession, read_pci_numa_node
from gputuned.config import Config, ConfigError, config_from_mapping
from gputuned.daemon.placement import host_nodes
from gputuned.daemon.plans import plan_slots
from gputuned.testing.fake_nvml import hgx8
from gputuned.tuners.turns import TrialTurns
from tests.conftest import host_root

TWO_WORKERS = """
[[workers]]
name = "resnet"
listen = "127.0.0.1:8000"
cpus = "0"

[[workers]]
name = "other"
model = "tests.memory_hungry_model:build"
listen = "127.0.0.1:8001"
cpus = "1"
"""


def parse(text: str) -> Config:
    return config_from_mapping(tomllib.loads(text))


# --- definitions --------------------------------------------------------------------------------


def test_the_single_worker_table_is_one_worker_named_worker():
    config = parse('[worker]\nmodel = "resnet-mini"\n')
    (worker,) = config.worker_definitions(gpu_count=8)
    assert worker.name == "worker" and worker.model == "resnet-mini"
    assert Config().worker_definitions(0) == ()  # a config that names no worker monitors only


def test_named_workers_with_their_own_cpus():
    workers = parse(TWO_WORKERS).worker_definitions(gpu_count=0)
    assert [(w.name, w.listen, w.cpus) for w in workers] == [("resnet", "127.0.0.1:8000", "0"), ("other", "127.0.0.1:8001", "1")]
    assert workers[1].model == "tests.memory_hungry_model:build" and workers[1].ping_timeout_seconds == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TWO_WORKERS.replace('name = "other"', 'name = "resnet"'), "workers[1].name: 'resnet' is also the name of workers[0]"),
        (TWO_WORKERS.replace("8001", "8000"), "workers[1].listen: worker 'other' and worker 'resnet' both listen on port 8000"),
        (TWO_WORKERS.replace('"127.0.0.1:8001"', '"0.0.0.0:8000"'), "both listen on port 8000"),
        (TWO_WORKERS + '\n[worker]\nmodel = "x"\n', "worker and workers: use one of [worker], [[workers]] or [workers_per_gpu]"),
        (TWO_WORKERS.replace('name = "other"\n', ""), "workers[1]: missing key 'name'"),
        (TWO_WORKERS.replace('cpus = "1"', 'cpus = "1-"'), "workers[1] (other).cpus: '1-' is not a CPU list"),
        (TWO_WORKERS.replace('name = "other"', 'name = "../etc"'), "workers[1] (../etc).name: '../etc' is not allowed"),
        (TWO_WORKERS.replace("device = ", "x = ").replace('cpus = "1"', 'device = "tpu"'), "workers[1] (other).device: 'tpu'"),
        ("workers = 3\n", "workers: expected one or more [[workers]] tables"),
        (TWO_WORKERS.replace('cpus = "1"', 'gpu_memory_fraction = 0.5\ndevice = "cpu"'), "gpu_memory_fraction: caps a GPU's"),
        (TWO_WORKERS.replace('cpus = "1"', "gpu_memory_fraction = 0"), "gpu_memory_fraction: 0.0 is out of range"),
        ('[workers_per_gpu]\nname = "a"\n', "workers_per_gpu: 'name' and 'device' are set per GPU"),
        ('[workers_per_gpu]\nlisten = "127.0.0.1:65530"\n', None),
    ],
)
def test_bad_worker_definitions_name_the_worker_and_the_key(text, message):
    if message is None:  # valid as a file; too many GPUs for its ports is found at expansion
        with pytest.raises(ConfigError, match=r"ports 65530\.\.65537 for 8 GPUs run past 65535"):
            parse(text).worker_definitions(gpu_count=8)
        return
    with pytest.raises(ConfigError) as refused:
        parse(text)
    assert message in str(refused.value)


def test_one_worker_per_gpu_from_a_template():
    config = parse('[workers_per_gpu]\nmodel = "/models/resnet50.pt"\nlisten = "127.0.0.1:9000"\n')
    workers = config.worker_definitions(gpu_count=8)
    assert [w.name for w in workers] == [f"gpu{i}" for i in range(8)]
    assert [w.device for w in workers] == [f"cuda:{i}" for i in range(8)]
    assert [w.listen for w in workers] == [f"127.0.0.1:{9000 + i}" for i in range(8)]
    assert {w.model for w in workers} == {"/models/resnet50.pt"} and {w.placement for w in workers} == {"auto"}
    assert config.worker_definitions(gpu_count=0) == ()


# --- where each runs ----------------------------------------------------------------------------


def test_eight_gpus_on_two_nodes_give_eight_workers_each_on_its_gpus_node(tmp_path: Path):
    _proc, sys_root = host_root("dual-socket-8gpu")
    bus_ids = NvmlSession(hgx8(), sys_root).bus_ids()
    gpu_nodes = {gpu: read_pci_numa_node(sys_root, bdf) for gpu, bdf in bus_ids.items()}
    nodes = host_nodes(sys_root)
    workers = parse('[workers_per_gpu]\nlisten = "127.0.0.1:9000"\n').worker_definitions(len(bus_ids))
    plans = plan_slots(workers, tmp_path / "run", tmp_path / "state", len(bus_ids), gpu_nodes, nodes)
    assert [p.name for p in plans] == [f"gpu{i}" for i in range(8)]
    assert [p.gpu for p in plans] == list(range(8))
    assert [p.placement.node for p in plans if p.placement] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert plans[0].placement is not None and plans[0].placement.cpulist() == "0-27,56-83"
    assert plans[7].placement is not None and plans[7].placement.cpulist() == "28-55,84-111"
    assert [p.control_socket.name for p in plans] == [f"gpu{i}.sock" for i in range(8)]
    assert len({p.state_dir for p in plans}) == 8 and plans[3].state_dir == tmp_path / "state" / "workers" / "gpu3"


def test_explicit_cpus_split_a_host_and_the_single_worker_keeps_its_files(tmp_path: Path):
    _proc, sys_root = host_root("dual-socket-8gpu")
    nodes = host_nodes(sys_root)
    workers = parse(TWO_WORKERS.replace('cpus = "1"', 'cpus = "30-31"')).worker_definitions(0)
    first, second = plan_slots(workers, tmp_path, tmp_path / "state", 0, {}, nodes)
    assert first.placement is not None and first.placement.cpus == (0,) and first.placement.node == 0
    assert second.placement is not None and second.placement.cpus == (30, 31) and second.placement.node == 1
    (single,) = plan_slots(parse("[worker]\n").worker_definitions(0), tmp_path, tmp_path / "state", 0, {}, nodes)
    assert single.control_socket == tmp_path / "worker.sock" and single.state_dir == tmp_path / "state"
    with pytest.raises(ConfigError, match="worker other: cpus: CPUs 500 are not online"):
        plan_slots(
            parse(TWO_WORKERS.replace('cpus = "1"', 'cpus = "500"')).worker_definitions(0), tmp_path, tmp_path, 0, {}, nodes
        )


# --- trial turns ----------------------------------------------------------------------------------


def test_one_trial_at_a_time_handed_out_to_whoever_waited_longest():
    turns = TrialTurns()
    a, b, c = (turns.member(name, "host") for name in "abc")
    assert b.acquire(10.0)  # free: b takes it
    assert not a.acquire(10.5) and not c.acquire(11.0)  # both wait, a first
    b.release(12.0)
    assert not c.acquire(12.1)  # a waited longer
    assert a.acquire(12.2) and not c.acquire(12.3)
    a.release(15.0)
    assert c.acquire(15.1)


def test_a_worker_that_stopped_asking_does_not_block_the_others():
    turns = TrialTurns()
    a, b = turns.member("a", "host"), turns.member("b", "host")
    assert turns.member("c", "host").acquire(0.0)
    assert not a.acquire(1.0)  # a asks once, then finds nothing more to try
    turns.release("c", "host", 2.0)
    assert b.acquire(10.0)  # a's ask is stale by now


def test_a_worker_waiting_for_a_clean_baseline_keeps_its_place_in_the_queue():
    turns = TrialTurns()
    busy, patient = turns.member("busy", "host"), turns.member("patient", "host")
    assert busy.acquire(0.0)
    patient.wait(1.0)  # its baseline overlaps busy's trial: it queues without a turn
    busy.release(4.0)
    assert not busy.acquire(4.5)  # busy has another change to try, but patient waited longer
    assert patient.acquire(7.5)  # a clean baseline later, patient takes its turn
    patient.release(11.0)
    patient.withdraw()
    assert busy.acquire(11.5)


def test_one_trial_per_numa_node_and_baselines_disturbed_by_a_neighbours_trial():
    turns = TrialTurns()
    node0a, node0b, node1 = turns.member("a", "node0"), turns.member("b", "node0"), turns.member("c", "node1")
    assert node0a.acquire(0.0) and node1.acquire(0.0) and not node0b.acquire(0.0)
    assert node0b.disturbed(0.0, 3.0) and not node0a.disturbed(0.0, 3.0)
    assert not node1.disturbed(0.0, 3.0)  # another node's trials are not its neighbours'
    node0a.release(5.0)
    assert node0b.disturbed(4.0, 7.0) and not node0b.disturbed(5.5, 8.5)
