"""One model served by Ray Serve with `@serve.batch`, for bench/peers.py: what a PyTorch user
writes to batch requests under Ray. Runs under the interpreter `scripts/install_ray.sh`
makes (`.ray/bin/python`, with ray[serve] and the checkout's torch).

    python bench/ray_server.py MODEL SHAPE PORT MAX_BATCH WAIT_US REPLICAS

MODEL is a `module:factory` as the gputuned worker takes it. Each replica holds its own copy
of the model, runs one batch at a time on one thread (torch.set_num_threads(1), as the
worker's lanes are set for this comparison) and answers the v2 protocol's model metadata
and binary-extension inference (input "input" FP32 [-1, *SHAPE], output "output0") at
/v2/models/model, parsing it as a Ray user would, with json and numpy. Ray runs locally
(`ray.init` with the CPUs this process may use, no dashboard, no access log) until SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gputuned.inputs import parse_shape
from gputuned.worker.codec import HEADER_LENGTH
from gputuned.worker.models import load_model, one_input


class Model:
    """The deployment (`serve.deployment(Model)`): one replica's model and its batching."""

    def __init__(self, spec: str, dims: tuple[int, ...], max_batch: int, wait_s: float) -> None:
        torch.set_num_threads(1)
        loaded = load_model(spec, torch.device("cpu"), one_input(dims))
        self.model = loaded.module
        self.dims = dims
        self.out_dims = loaded.outputs[0].shape
        self.infer.set_max_batch_size(max_batch)
        self.infer.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def infer(self, items: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.concatenate(items))).numpy()
        sizes = np.cumsum([len(item) for item in items])[:-1]
        return np.split(outputs, sizes)

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(
                {
                    "name": "model",
                    "platform": "ray_serve",
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *self.dims]}],
                    "outputs": [{"name": "output0", "datatype": "FP32", "shape": [-1, *self.out_dims]}],
                }
            )
        body = await request.body()
        length = int(request.headers[HEADER_LENGTH])
        header = json.loads(body[:length])
        shape = header["inputs"][0]["shape"]
        output = await self.infer(np.frombuffer(body[length:], dtype=np.float32).reshape(shape))
        data = output.tobytes()
        answer = json.dumps(
            {
                "model_name": "model",
                "outputs": [
                    {
                        "name": "output0",
                        "datatype": "FP32",
                        "shape": list(output.shape),
                        "parameters": {"binary_data_size": len(data)},
                    }
                ],
            }
        ).encode()
        return Response(answer + data, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(answer))})


def main() -> None:
    spec, shape, port, max_batch, wait_us, replicas = sys.argv[1:7]
    dims = parse_shape(shape)
    cpus = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    app = (
        serve.deployment(Model)
        .options(
            num_replicas=int(replicas),
            max_ongoing_requests=4 * int(max_batch),
            ray_actor_options={"num_cpus": cpus / int(replicas)},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},  # no log line per request
        )
        .bind(spec, dims, int(max_batch), int(wait_us) / 1e6)
    )
    serve.run(app, route_prefix="/v2/models/model", blocking=False)
    print(f"serving on 127.0.0.1:{port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    ray.shutdown()  # the local cluster with it (serve.shutdown's graceful drain can take 30 s on one core)


if __name__ == "__main__":
    main()
