"""Frames in flight on OpenVINO requests, finished in the order they were started.

Why not ``openvino.AsyncInferQueue`` with a Python callback: its callback, and the release of
the Python function it wraps, run on OpenVINO's own threads and take the GIL there. When one
of those threads reaches the GIL after the interpreter began to shut down, CPython ends the
thread in the middle of C++ code and the process aborts ("terminate called without an active
exception"; gdb showed the release of the callback at the end of a request's last pipeline
stage, after ``wait()`` had already returned, so no amount of waiting in Python closes the
window). Here every request runs without any Python code attached: OpenVINO threads never
touch Python, and everything after inference (copying the output, post-processing) happens on
the thread that calls :meth:`InFlight.finish_ready`, :meth:`InFlight.finish_next` or
:meth:`InFlight.start`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

import numpy as np
import openvino as ov

from anomaly_edge.core import Finish


class InFlight:
    """Up to ``size`` requests of one compiled model running at once, strictly in order: the
    local backend's :class:`~anomaly_edge.core.Pool`.

    Not thread-safe on its own: the caller (the core) serialises calls with a lock. Each
    call writes its output into an array of its own, handed over when it finishes (the
    request is reused afterwards, the array is not).
    """

    def __init__(self, compiled: ov.CompiledModel, size: int) -> None:
        self._idle = [compiled.create_infer_request() for _ in range(size)]
        output = compiled.outputs[0]
        self._output_shape = tuple(int(d) for d in output.get_shape())
        self._output_dtype = output.get_element_type().to_dtype()
        self._busy: deque[tuple[ov.InferRequest, Finish, Any, np.ndarray]] = deque()

    def __len__(self) -> int:
        """Frames started and not yet finished."""
        return len(self._busy)

    def start(self, tensor: np.ndarray, finish: Finish) -> None:
        """Start inference on ``tensor`` (kept alive and unchanged by the caller until
        ``finish`` runs); when every request is busy, the oldest frame is finished first."""
        if not self._idle:
            self.finish_next()
        if not (tensor.flags.c_contiguous and tensor.flags.writeable):
            tensor = np.array(tensor, order="C")  # e.g. bytes off the network: shared only if so
        request = self._idle.pop()
        try:
            # Tensors over our arrays, set directly: the dict form of start_async, and a copy
            # of the output afterwards, cost this thread about 0.15 ms more per frame
            # (measured on 2 cores; benchmark_app does neither).
            output = np.empty(self._output_shape, self._output_dtype)
            request.set_input_tensor(ov.Tensor(tensor, shared_memory=True))
            request.set_output_tensor(ov.Tensor(output, shared_memory=True))
            request.start_async()
        except BaseException:
            self._idle.append(request)
            raise
        self._busy.append((request, finish, tensor, output))

    def finish_ready(self) -> None:
        """Finish the oldest frames whose inference is over, without waiting for any."""
        while self._busy and self._busy[0][0].wait_for(0):
            self.finish_next()

    def finish_next(self) -> None:
        """Wait for the oldest frame and finish it (its ``finish`` gets the map or the error)."""
        request, finish, _tensor, output = self._busy.popleft()
        raw_map: np.ndarray | None = None
        error: BaseException | None = None
        try:
            request.wait()
            raw_map = output
        except BaseException as exc:  # an inference failure belongs to this frame alone
            error = exc
        finally:
            self._idle.append(request)
        finish(raw_map, error)
        if error is not None and not isinstance(error, Exception):
            raise error  # Ctrl-C and the like still stop the caller (the frame failed with it)

    def finish_all(self) -> None:
        while self._busy:
            self.finish_next()

    def cancel(self, reason: BaseException) -> None:
        """Wait until no request runs any more; unfinished frames fail with ``reason``."""
        while self._busy:
            request, finish, _tensor, _output = self._busy.popleft()
            with contextlib.suppress(Exception):  # the frame fails with `reason` regardless
                request.wait()
            self._idle.append(request)
            finish(None, reason)
