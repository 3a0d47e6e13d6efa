"""`gputuned worker`: turns command-line arguments into a loaded model and a running worker."""

from __future__ import annotations

import argparse
import grp
import logging
import sys

import torch

from gputuned.config import parse_listen_address
from gputuned.inputs import parse_shape
from gputuned.knobs import KnobError, parse_assignments
from gputuned.worker.allocator import keep_freed_memory
from gputuned.worker.models import ModelLoadError, Signature, checked_signature, load_model, one_input, parse_input
from gputuned.worker.service import WorkerOptions, event_loop_factory, run_worker

log = logging.getLogger(__name__)


def choose_device(requested: str | None) -> torch.device:
    """The device to serve on; CUDA by default when present. Raises ValueError if unusable."""
    if requested is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested!r} is not cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ValueError(f"--device {requested!r} is not cpu or cuda[:N]")
    return device


def cap_gpu_memory(device: torch.device, fraction: float) -> None:
    """Caps the caching allocator at `fraction` of the GPU's memory (torch raises
    OutOfMemoryError past it, which the lanes count as an OOM event). Raises ValueError if
    the share is out of range, or given for the CPU."""
    if not 0.01 <= fraction <= 1.0:
        raise ValueError(f"--gpu-memory-fraction {fraction:g} is out of range; allowed 0.01..1")
    if fraction == 1.0:
        return
    if device.type != "cuda":
        raise ValueError(f"--gpu-memory-fraction caps a GPU's memory, and the device is {device}")
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def signature_from_arguments(args: argparse.Namespace) -> Signature | None:
    """The signature the command line declares (--input, or the one --input-shape), or None: the model's own."""
    if args.input:
        return checked_signature([parse_input(text) for text in args.input], args.max_length, "--input")
    if args.input_shape:
        return one_input(parse_shape(args.input_shape), args.input_dtype, args.input_name)
    return None


def run_from_arguments(args: argparse.Namespace) -> int:
    keep_freed_memory()  # first: a thread keeps the malloc arena it first took, and CUDA starts threads
    try:
        device = choose_device(args.device)
        host, port = parse_listen_address(args.listen)
        signature = signature_from_arguments(args)
        group = grp.getgrnam(args.control_group).gr_gid if args.control_group else None
        if args.max_queue < 1:
            raise ValueError("--max-queue must be at least 1")
        cap_gpu_memory(device, args.gpu_memory_fraction)
        initial_knobs = parse_assignments(args.knob or [])
        saved_knobs = parse_assignments(args.saved_knob or [])
        loop_factory = event_loop_factory(args.event_loop)
    except (ValueError, KeyError, ModelLoadError) as exc:
        print(f"gputuned worker: {exc}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, device, signature, args.model_name, args.max_length)
    except ModelLoadError as exc:
        print(f"gputuned worker: {exc}", file=sys.stderr)
        return 2
    options = WorkerOptions(
        host=host,
        port=port,
        control_socket=args.control_socket,
        control_group=group,
        max_queue_items=args.max_queue,
        initial_knobs=initial_knobs,
        saved_knobs=saved_knobs,
        loop_factory=loop_factory,
    )
    try:
        return run_worker(model, options)
    except KnobError as exc:
        print(f"gputuned worker: --knob refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gputuned worker: cannot serve on {args.listen} or {args.control_socket}: {exc}", file=sys.stderr)
        return 1
