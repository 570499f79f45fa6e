"""The raw IR, compiled once for throughput, awaited from the server's event loop.

The served IR has a static batch of one (NPUs need static shapes), so the server does not
batch: concurrent requests run side by side on a pool of OpenVINO infer requests (one per
core on a CPU, as the THROUGHPUT hint picks), which is what batching would buy on a CPU.
Each request runs on an OpenVINO thread; its callback hands the result back to the event
loop, so no Python thread waits on inference.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import compile_for, default_cache_dir, read_ir, resolve_device
from anomaly_edge.serve.wire import rt_info_dict


class RawNetwork:
    """One IR compiled for ``device``; ``await infer(tensor)`` returns its anomaly map."""

    def __init__(
        self, path: str | Path, device: str = "AUTO", num_requests: int | None = None
    ) -> None:
        self.path = Path(path)
        graph = read_ir(self.path)
        self.metadata = ModelMetadata.read_from(graph, source=str(self.path))
        self.rt_info = rt_info_dict(graph)
        self.input_shape = [int(d) for d in graph.inputs[0].get_shape()]
        self.output_shape = [int(d) for d in graph.outputs[0].get_shape()]
        self.device = resolve_device(device)
        self._compiled = compile_for(graph, self.device, default_cache_dir(), hint="THROUGHPUT")
        if num_requests is None:
            num_requests = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.num_requests = max(1, num_requests)
        self._requests = [self._compiled.create_infer_request() for _ in range(self.num_requests)]
        self._idle: asyncio.Queue[ov.InferRequest] | None = None  # made inside the event loop

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run one ``[1, 3, h, w]`` float32 tensor; returns the ``[1, 1, h, w]`` map (a copy)."""
        if tuple(tensor.shape) != tuple(self.input_shape) or tensor.dtype != np.float32:
            raise InvalidInputError(
                f"input must be FP32 {self.input_shape}, got {tensor.dtype} {list(tensor.shape)}"
            )
        loop = asyncio.get_running_loop()
        if self._idle is None:
            self._idle = asyncio.Queue()
            for request in self._requests:
                self._idle.put_nowait(request)
        request = await self._idle.get()
        done: asyncio.Future[np.ndarray] = loop.create_future()
        idle = self._idle

        def finished(_: Any, __: Any = None) -> None:  # on an OpenVINO thread
            # Copy now and give the request back only when inference is over, even when the
            # awaiting caller was cancelled meanwhile (a client that went away).
            anomaly_map = request.get_output_tensor(0).data.copy()
            loop.call_soon_threadsafe(_settle, done, anomaly_map, idle, request)

        try:
            request.set_callback(finished, None)
            request.set_input_tensor(ov.Tensor(np.ascontiguousarray(tensor)))  # a copy
            request.start_async()
        except BaseException:
            idle.put_nowait(request)
            raise
        return await done

    def release(self) -> None:
        """Wait for requests in flight and drop the OpenVINO objects (at shutdown)."""
        for request in self._requests:
            request.wait()
        self._requests = []
        del self._compiled


def _settle(
    future: asyncio.Future[np.ndarray],
    anomaly_map: np.ndarray,
    idle: asyncio.Queue[ov.InferRequest],
    request: ov.InferRequest,
) -> None:
    idle.put_nowait(request)
    if not future.done():  # a cancelled caller needs nothing
        future.set_result(anomaly_map)
