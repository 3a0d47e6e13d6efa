"""A worker built on the embeddable agent, started by the daemon in tests as `worker.command`.

It serves no model, only the control socket, so it starts in a fraction of a second. Its
`pool_mb` knob takes `--ack-seconds` to apply, as a pool of pinned memory does to allocate;
`--malformed-hello` makes its hello declare a knob without its maximum, a protocol error.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from gputuned.worker.agent import Agent


class MalformedAgent(Agent):
    def hello(self) -> dict[str, Any]:
        hello = super().hello()
        del hello["knobs"]["max_batch_size"]["max"]
        return hello


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--ack-seconds", type=float, default=0.0)
    parser.add_argument("--malformed-hello", action="store_true")
    args = parser.parse_args()
    kind = MalformedAgent if args.malformed_hello else Agent
    agent = kind(args.socket, model="agent-test", device="cpu", input_shape=[4], input_dtype="FP32")
    agent.knob("max_batch_size", default=1, minimum=1, maximum=64, apply=lambda value: None)
    agent.knob("pool_mb", default=0, minimum=0, maximum=1024, apply=lambda value: time.sleep(args.ack_seconds))
    agent.stats_source(lambda: {"requests": 0, "completed": 0, "failed": 0})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.start()
    stop.wait()
    agent.stop()


if __name__ == "__main__":
    main()
