"""The Host dashboard: what the GPUs, PCIe links, NUMA memory system and host are doing."""

from __future__ import annotations

from typing import Any

from gputuned.dashboards.panels import GPU, INSTANCE, RATE, WORKER, WORKER_GPU, Board, dashed_red, graph

UID = "gputuned-host"


def activity_panels() -> list[Any]:
    """What the SMs really did (GPM, Hopper and newer) and where each GPU's energy went."""
    instance = "GPU {{gpu}} {{gpu_instance}}"
    return [
        graph(
            "SM activity",
            "Share of the SMs busy (GPM): unlike GPU utilisation (a kernel ran at all), it falls when kernels "
            "leave SMs idle. Against SM occupancy: resident warps over the maximum. Needs a Hopper or newer GPU; "
            "under MIG one line per GPU instance.",
            "percentunit",
            [
                (f"gputuned_gpu_sm_active_ratio{{{GPU}}}", f"{instance} active"),
                (f"gputuned_gpu_sm_occupancy_ratio{{{GPU}}}", f"{instance} occupancy"),
            ],
            maximum=1,
        ),
        graph(
            "Tensor and DRAM activity",
            "Share of the time the tensor pipes were busy, and the device memory bandwidth used (GPM).",
            "percentunit",
            [
                (f"gputuned_gpu_tensor_active_ratio{{{GPU}}}", f"{instance} tensor"),
                (f"gputuned_gpu_dram_bandwidth_utilization_ratio{{{GPU}}}", f"{instance} DRAM"),
            ],
            maximum=1,
        ),
        graph(
            "NVLink throughput",
            "Bytes per second read (rx) and written (tx) over all NVLink links of each GPU (GPM).",
            "Bps",
            [(f"gputuned_gpu_nvlink_throughput_bytes_per_second{{{GPU}}}", f"{instance} {{{{direction}}}}")],
        ),
        graph(
            "Where the energy went",
            "Each GPU's power split among gputuned's workers (by their processes' share of its utilisation) and "
            "what no worker is charged with: idle (no process), other processes, MIG (one counter for all instances).",
            "watt",
            [
                (f"rate(gputuned_worker_energy_joules_total{{{WORKER_GPU}}}[{RATE}])", "GPU {{gpu}} {{worker}}"),
                (f"rate(gputuned_gpu_unattributed_energy_joules_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} {{reason}}"),
            ],
            width=24,
        ),
    ]


def build() -> Board:
    board = Board(
        UID,
        "gputuned / Host",
        "Every GPU through NVML, the PCIe links, the NUMA memory system and the host, as sampled by gputuned.",
    )
    board.row("GPUs").add(
        graph(
            "GPU utilisation",
            "Share of the sample period in which a kernel ran on each GPU (NVML utilization.gpu).",
            "percentunit",
            [(f"gputuned_gpu_utilization_ratio{{{GPU}}}", "GPU {{gpu}}")],
            maximum=1,
        ),
        graph(
            "GPU memory",
            "Device memory allocated by processes, against what is installed.",
            "bytes",
            [
                (f"gputuned_gpu_memory_used_bytes{{{GPU}}}", "GPU {{gpu}} used"),
                (f"gputuned_gpu_memory_total_bytes{{{GPU}}}", "GPU {{gpu}} total"),
            ],
        ),
        graph("Power draw", "Board power draw of each GPU.", "watt", [(f"gputuned_gpu_power_watts{{{GPU}}}", "GPU {{gpu}}")]),
        graph("Temperature", "GPU core temperature.", "celsius", [(f"gputuned_gpu_temperature_celsius{{{GPU}}}", "GPU {{gpu}}")]),
        graph(
            "SM clock",
            "Current SM clock; it drops when a throttle reason holds it (next panel).",
            "hertz",
            [(f"gputuned_gpu_sm_clock_hertz{{{GPU}}}", "GPU {{gpu}}")],
        ),
        graph(
            "GPUs held below their maximum clock, by reason",
            "How many of the selected GPUs each NVML clock event reason (power cap, thermal, idle, ...) holds "
            "below their maximum clock.",
            "short",
            [(f"sum by (reason) (gputuned_gpu_clock_event_active{{{GPU}}})", "{{reason}}")],
        ),
        graph(
            "GPU errors",
            "Critical XID errors, volatile ECC errors and PCIe replays (link-level retransmissions) per "
            "interval; any growth deserves a look.",
            "short",
            [
                (f"increase(gputuned_gpu_xid_errors_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} XID {{xid}}"),
                (f"increase(gputuned_gpu_ecc_errors_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} ECC {{type}}"),
                (f"increase(gputuned_pcie_replays_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} PCIe replays"),
            ],
            width=24,
        ),
    )
    board.row("GPU activity and energy").add(*activity_panels())
    board.row("PCIe").add(
        graph(
            "PCIe throughput",
            "Bytes each GPU sent (tx, device to host) and received (rx, host to device) per "
            "second, against the link's payload capacity per direction.",
            "Bps",
            [
                (f"rate(gputuned_pcie_tx_bytes_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} tx"),
                (f"rate(gputuned_pcie_rx_bytes_total{{{GPU}}}[{RATE}])", "GPU {{gpu}} rx"),
                (f"gputuned_pcie_link_capacity_bytes_per_second{{{GPU}}}", "GPU {{gpu}} capacity"),
            ],
            width=12,
        ),
        graph(
            "PCIe link utilisation",
            "The busier direction's throughput as a share of the link's capacity. Above "
            "80% the batch tuner steps the batch size down.",
            "percentunit",
            [(f"gputuned_pcie_utilization_ratio{{{GPU}}}", "GPU {{gpu}}"), ("0.8", "batch tuner limit")],
            width=12,
            maximum=1,
        ).with_override(*dashed_red("batch tuner limit")),
        graph(
            "PCIe link generation",
            "Current link generation against the highest the link supports (the current one drops while the GPU idles).",
            "short",
            [
                (f"gputuned_pcie_link_generation{{{GPU}}}", "GPU {{gpu}} current"),
                (f"gputuned_pcie_link_max_generation{{{GPU}}}", "GPU {{gpu}} max"),
            ],
            width=12,
        ),
        graph(
            "PCIe link width",
            "Current link width in lanes against the widest the link can train; a narrower link "
            "than its maximum under load points at a seating or riser problem.",
            "short",
            [
                (f"gputuned_pcie_link_width{{{GPU}}}", "GPU {{gpu}} current"),
                (f"gputuned_pcie_link_max_width{{{GPU}}}", "GPU {{gpu}} max"),
            ],
            width=12,
        ),
    )
    board.row("NUMA").add(
        graph(
            "NUMA allocations per node",
            "Pages allocated on each node as intended (hit), on it although another "
            "was intended (miss), and intended for it but placed elsewhere (foreign), per second.",
            "short",
            [
                (f"rate(gputuned_numa_hit_total{{{INSTANCE}}}[{RATE}])", "node {{node}} hit"),
                (f"rate(gputuned_numa_miss_total{{{INSTANCE}}}[{RATE}])", "node {{node}} miss"),
                (f"rate(gputuned_numa_foreign_total{{{INSTANCE}}}[{RATE}])", "node {{node}} foreign"),
            ],
        ),
        graph(
            "NUMA hinting faults",
            "Automatic NUMA balancing's sampled accesses: to pages already on the accessing "
            "node (local) and on another node (remote), and pages it migrated, per second. The kernel counts these "
            "host-wide (/proc/vmstat), not per node.",
            "short",
            [
                (f"rate(gputuned_vmstat_numa_hint_faults_local_total{{{INSTANCE}}}[{RATE}])", "local"),
                (
                    (
                        f"rate(gputuned_vmstat_numa_hint_faults_total{{{INSTANCE}}}[{RATE}]) - "
                        f"rate(gputuned_vmstat_numa_hint_faults_local_total{{{INSTANCE}}}[{RATE}])"
                    ),
                    "remote",
                ),
                (f"rate(gputuned_vmstat_numa_pages_migrated_total{{{INSTANCE}}}[{RATE}])", "migrated"),
            ],
        ),
        graph(
            "Free memory per node",
            "Free memory on each NUMA node against what is installed there.",
            "bytes",
            [
                (f"gputuned_numa_memory_free_bytes{{{INSTANCE}}}", "node {{node}} free"),
                (f"gputuned_numa_memory_total_bytes{{{INSTANCE}}}", "node {{node}} total"),
            ],
        ),
        graph(
            "Worker pages off its GPU's node",
            "Share of the worker's resident pages that are not on its home node "
            "(its GPU's node, or its CPUs' when it has no GPU); remote pages cost every host-to-device copy.",
            "percentunit",
            [(f"gputuned_worker_offnode_ratio{{{WORKER}}}", "{{worker}} off-node share")],
            maximum=1,
        ),
        graph(
            "Worker memory per node",
            "The worker's resident memory on each NUMA node (from its numa_maps).",
            "bytes",
            [(f"gputuned_worker_numa_resident_bytes{{{WORKER}}}", "{{worker}} node {{node}}")],
        ),
        graph(
            "Worker page faults",
            "Page faults of the worker process per second, minor and major.",
            "short",
            [(f"rate(gputuned_worker_page_faults_total{{{WORKER}}}[{RATE}])", "{{worker}} {{kind}}")],
        ),
    )
    board.row("Host").add(
        graph(
            "Host CPU",
            "Share of time the host's CPUs spent outside idle and iowait: the mean over all CPUs and the busiest one.",
            "percentunit",
            [
                (f"avg by (instance) (gputuned_host_cpu_busy_ratio{{{INSTANCE}}})", "mean"),
                (f"max by (instance) (gputuned_host_cpu_busy_ratio{{{INSTANCE}}})", "busiest CPU"),
            ],
            maximum=1,
        ),
        graph(
            "Host memory",
            "Physical memory in use and available to new work without swapping.",
            "bytes",
            [
                (f"gputuned_host_memory_used_bytes{{{INSTANCE}}}", "used"),
                (f"gputuned_host_memory_available_bytes{{{INSTANCE}}}", "available"),
                (f"gputuned_host_memory_total_bytes{{{INSTANCE}}}", "total"),
            ],
        ),
        graph(
            "gputuned's own health",
            "Whether each collector's last tick read everything it should (1) and how "
            "old the served samples are; a collector at 0 names a source that stopped answering.",
            "short",
            [
                (f"gputuned_collector_success{{{INSTANCE}}}", "{{collector}} ok"),
                (f"gputuned_sample_age_seconds{{{INSTANCE}}}", "sample age (s)"),
            ],
        ),
    )
    return board
