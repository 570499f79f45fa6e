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
threads never touch Python: each frame's output goes into an array of its own, so a request
is free again as soon as its inference ends, and everything after inference
(post-processing, in order) happens on the thread that calls :meth:`InFlight.start`,
:meth:`InFlight.finish_ready` or :meth:`InFlight.finish_next`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov

from anomaly_edge.core import Finish


@dataclass
class _Job:
    handle: int  # the queue's request
    number: int  # this job's place among all jobs started
    finish: Finish
    tensor: np.ndarray  # kept alive while the request reads it
    output: np.ndarray  # the request writes the frame's output here


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
        self._size = size
        output = compiled.outputs[0]
        self._output_shape = tuple(int(d) for d in output.get_shape())
        self._output_dtype = output.get_element_type().to_dtype()
        self._busy: deque[_Job] = deque()
        self._numbers = itertools.count()
        self._latest = [-1] * size  # per request: the number of the last job started on it

    def __len__(self) -> int:
        """Frames started and not yet finished."""
        return len(self._busy)

    def start(self, tensor: np.ndarray, finish: Finish) -> None:
        """Start inference on ``tensor`` (kept alive and unchanged by the caller until
        ``finish`` runs) on the first free request, waiting for one when all are busy."""
        if len(self._busy) >= 2 * self._size:  # finished frames wait behind a slow one
            self.finish_ready()
            if len(self._busy) >= 2 * self._size:
                self.finish_next()
        if not (tensor.flags.c_contiguous and tensor.flags.writeable):
            tensor = np.array(tensor, order="C")  # e.g. bytes off the network
        output = np.empty(self._output_shape, self._output_dtype)
        # Blocks in C++, the GIL released, until a request is free; start_async below takes
        # that same request (the queue hands out the oldest free one, and only this thread
        # starts requests).
        handle = self._queue.get_idle_request_id()
        # Tensors over our arrays, set directly: the dict form of start_async, and a copy of
        # the output afterwards, cost this thread about 0.15 ms more per frame.
        self._requests[handle].set_output_tensor(ov.Tensor(output, shared_memory=True))
        self._start_async(ov.Tensor(tensor, shared_memory=True), None)
        job = _Job(handle, next(self._numbers), finish, tensor, output)
        self._latest[handle] = job.number
        self._busy.append(job)

    def _done(self, job: _Job) -> bool:
        # A request runs again only once free, so a later job on it means this one is done.
        return self._latest[job.handle] != job.number or self._requests[job.handle].wait_for(0)

    def finish_ready(self) -> None:
        """Finish the oldest frames whose inference is over, without waiting for any."""
        while self._busy and self._done(self._busy[0]):
            self.finish_next()

    def finish_next(self) -> None:
        """Wait for the oldest frame and finish it (its ``finish`` gets the output or the
        error)."""
        job = self._busy.popleft()
        error: BaseException | None = None
        try:
            if self._latest[job.handle] == job.number:
                self._requests[job.handle].wait()
        except BaseException as exc:  # an inference failure belongs to this frame alone
            error = exc
        job.finish(None if error is not None else job.output, error)
        if error is not None and not isinstance(error, Exception):
            raise error  # Ctrl-C and the like still stop the caller (the frame failed with it)

    def finish_all(self) -> None:
        while self._busy:
            self.finish_next()

    def cancel(self, reason: BaseException) -> None:
        """Wait until no request runs any more; unfinished frames fail with ``reason``."""
        with contextlib.suppress(Exception):  # the frames fail with `reason` regardless
            self._queue.wait_all()
        while self._busy:
            self._busy.popleft().finish(None, reason)
