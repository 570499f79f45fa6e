"""Frames in flight on OpenVINO requests, finished in the order they were started.

The requests live in an ``openvino.AsyncInferQueue`` with its own C++ callbacks only (no
Python callback is ever set): a request that ends is marked free in C++, and a frame waiting
to start takes the first free request, whichever it is. Waiting instead for the oldest frame
and restarting its request, as a loop over plain requests does, left the other request idle
whenever it finished first: on 2 busy cores that loop ran at 40-70 fps where the queue ran
at 75-110 (PaDiM 336x256, two requests, interleaved rounds).

Why no Python callback: it, and the release of the Python function it wraps, run on
OpenVINO's own threads and take the GIL there. When one of those threads reaches the GIL
after the interpreter began to shut down, CPython ends the thread in the middle of C++ code
and the process aborts ("terminate called without an active exception"; gdb showed the
release of the callback at the end of a request's last pipeline stage). Here OpenVINO
threads never touch Python: a request is free again as soon as its inference ends, and
everything after inference (post-processing, in order) happens on the thread that calls
:meth:`InFlight.start`, :meth:`InFlight.finish_ready` or :meth:`InFlight.finish_next`.

Each request keeps one input and one output buffer of its own, bound once: a frame is copied
into the input buffer of the request that runs it, and its output is copied out of the output
buffer once the frame is finished (or earlier, when the request is needed for a later frame
first). Binding new tensors to a request for every frame instead (a new input array, a new
output array) cost the calling thread 0.44 ms a frame against 0.14 ms with bound buffers and
both copies, in a plain loop over the queue on the busy 2-core machine: each binding is
several Python-to-C++ calls, run with caches that the inference in between has just emptied.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import openvino as ov

from anomaly_edge.core import Finish

# One frame in flight, a list so that its output can be filled in once copied out:
# [the queue's request, this frame's place among all frames started, finish, its output
# (None while it lies in the request's output buffer), its input when not in the request's
# input buffer (kept alive while the request reads it)].
_Job = list[Any]
_HANDLE, _NUMBER, _FINISH, _OUTPUT = range(4)


class InFlight:
    """Up to ``size`` requests of one compiled model running at once; frames finished
    strictly in the order they were started: the local backend's
    :class:`~anomaly_edge.core.Pool`.

    Not thread-safe on its own: the caller (the core) serialises calls with a lock.
    """

    def __init__(self, compiled: ov.CompiledModel, size: int) -> None:
        self._queue = ov.AsyncInferQueue(compiled, size)
        # Made once: each queue[i] builds a new Python wrapper (0.1 ms a frame, measured).
        self._requests = [self._queue[i] for i in range(size)]
        # The queue's C++ start_async, bound once. The Python override would ask for an idle
        # request a second time, wrap it anew and dispatch the input through functools: on a
        # busy 2-core machine that cost this thread about 0.1-0.2 ms a frame (measured).
        base: Any = super(ov.AsyncInferQueue, self._queue)  # the stubs name no base class
        self._start_async: Callable[[ov.Tensor, object], None] = base.start_async
        self._get_idle = self._queue.get_idle_request_id
        self._size = size
        # Every request's buffers, bound once (anomaly-edge IRs have static shapes: the model
        # loader refuses others). The arrays stay referenced here while the requests use them.
        source, result = compiled.inputs[0], compiled.outputs[0]
        self._inputs = [_array(source) for _ in range(size)]
        self._outputs = [_array(result) for _ in range(size)]
        self._input_tensors = [ov.Tensor(a, shared_memory=True) for a in self._inputs]
        self._output_tensors = [ov.Tensor(a, shared_memory=True) for a in self._outputs]
        for request, tensor in zip(self._requests, self._output_tensors, strict=True):
            request.set_output_tensor(tensor)
        self._busy: deque[_Job] = deque()
        self._started = 0  # frames started so far: the next one's number
        self._latest = [-1] * size  # per request: the number of the last frame started on it
        # Per request: the frame whose output still lies in its output buffer, if any.
        self._holder: list[_Job | None] = [None] * size

    def __len__(self) -> int:
        """Frames started and not yet finished."""
        return len(self._busy)

    def start(self, tensor: np.ndarray, finish: Finish) -> None:
        """Start inference on a copy of ``tensor`` on the first free request, waiting for one
        when all are busy (the caller's array is free again when this returns)."""
        busy = self._busy
        if len(busy) >= 2 * self._size:  # finished frames wait behind a slow one
            self.finish_ready()
            if len(busy) >= 2 * self._size:
                self.finish_next()
        # Blocks in C++, the GIL released, until a request is free; start_async below takes
        # that same request (the queue hands out the oldest free one, and only this thread
        # starts requests).
        handle = self._get_idle()
        holder = self._holder[handle]
        if holder is not None:  # an earlier frame's output, not yet finished: keep it
            holder[_OUTPUT] = self._outputs[handle].copy()
            self._holder[handle] = None
        buffer = self._inputs[handle]
        kept: np.ndarray | None = None
        if tensor.shape == buffer.shape and tensor.dtype == buffer.dtype:
            np.copyto(buffer, tensor)
            self._start_async(self._input_tensors[handle], None)
        else:  # OpenVINO says what is wrong with it (the next frame binds the buffer again)
            kept = np.array(tensor, order="C")
            self._start_async(ov.Tensor(kept, shared_memory=True), None)
        number = self._started
        self._started = number + 1
        self._latest[handle] = number
        job: _Job = [handle, number, finish, None, kept]
        self._holder[handle] = job
        busy.append(job)

    def finish_ready(self) -> None:
        """Finish the oldest frames whose inference is over, without waiting for any."""
        busy, latest, requests = self._busy, self._latest, self._requests
        while busy:
            handle, number = busy[0][_HANDLE], busy[0][_NUMBER]
            # A request runs again only once free, so a later frame on it means this one is
            # done.
            if latest[handle] == number and not requests[handle].wait_for(0):
                return
            self.finish_next()

    def finish_next(self) -> None:
        """Wait for the oldest frame and finish it (its ``finish`` gets the output or the
        error)."""
        job = self._busy.popleft()
        handle, number, finish, output, _ = job
        error: BaseException | None = None
        try:
            if self._latest[handle] == number:
                self._requests[handle].wait()
        except BaseException as exc:  # an inference failure belongs to this frame alone
            error = exc
        if self._holder[handle] is job:
            self._holder[handle] = None
            if error is None:
                output = self._outputs[handle].copy()
        finish(None if error is not None else output, error)
        if error is not None and not isinstance(error, Exception):
            raise error  # Ctrl-C and the like still stop the caller (the frame failed with it)

    def finish_all(self) -> None:
        while self._busy:
            self.finish_next()

    def cancel(self, reason: BaseException) -> None:
        """Wait until no request runs any more; unfinished frames fail with ``reason``."""
        with contextlib.suppress(Exception):  # the frames fail with `reason` regardless
            self._queue.wait_all()
        self._holder = [None] * self._size
        while self._busy:
            self._busy.popleft()[_FINISH](None, reason)


def _array(port: ov.ConstOutput) -> np.ndarray:
    """A new array of the port's (static) shape and element type."""
    return np.zeros(tuple(port.get_shape()), port.get_element_type().to_dtype())
