"""The local pool's bound buffers and the per-shape frame checks: the fast path of a frame at
the network's size changes no result and no error."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import ColorFormat
from tests.ir_factory import GREY


@pytest.fixture(scope="module")
def model(synthetic_ir) -> AnomalyModel:
    return AnomalyModel(synthetic_ir, "CPU", num_requests=2, cache_dir=None)


def network_frames(model: AnomalyModel, count: int) -> list[np.ndarray]:
    """Frames at the network's size (no resize: the path without a copy of its own), each
    with a blob of another brightness and place."""
    height, width = model.metadata.input_size
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), GREY, np.uint8)
        y, x = (7 * i) % (height - 12), (11 * i) % (width - 12)
        frame[y : y + 12, x : x + 12] = 255 - 9 * i
        frames.append(frame)
    return frames


def test_a_network_sized_frame_is_copied_before_submit_returns(model):
    (frame,) = network_frames(model, 1)
    model.submit(frame, "blob")
    frame[:] = GREY  # the caller reuses its buffer at once
    model.submit(frame, "flat")
    results = dict(model.drain())
    assert results["blob"].label and not results["flat"].label


def test_non_contiguous_network_sized_frames_match_predict(model):
    frames = network_frames(model, 3)
    views = [np.repeat(f, 2, axis=1)[:, ::2] for f in frames]  # strided views of f
    assert not views[0].flags.c_contiguous
    for i, view in enumerate(views):
        model.submit(view, i)
    got = [p for _, p in model.drain()]
    for view, frame, prediction in zip(views, frames, got, strict=True):
        assert np.array_equal(view, frame)
        assert np.array_equal(prediction.anomaly_map, model.predict(frame).anomaly_map)


def test_outputs_survive_the_reuse_of_their_request(model):
    # Three times more frames than requests, none collected before the end: most requests
    # run a later frame before the earlier one is post-processed.
    frames = network_frames(model, 6 * model.num_requests)
    expected = [model.predict(f) for f in frames]
    for i, frame in enumerate(frames):
        model.submit(frame, i)
    got = [p for _, p in model.drain()]
    maps = [p.anomaly_map for p in got]
    for prediction, want in zip(got, expected, strict=True):
        assert np.array_equal(prediction.anomaly_map, want.anomaly_map)
        assert (prediction.raw_score, prediction.label) == (want.raw_score, want.label)
    assert len({m.ctypes.data for m in maps}) == len(maps)  # each its own array
    assert len({round(float(m.max()), 3) for m in maps}) > 1  # and the frames differed


def test_checks_still_refuse_a_frame_of_a_known_shape(model):
    (frame,) = network_frames(model, 1)
    model.predict(frame)  # this shape passed the checks once
    with pytest.raises(InvalidInputError, match="float32"):
        model.submit(frame.astype(np.float32))
    with pytest.raises(InvalidInputError, match="uint16"):
        model.submit(frame.astype(np.uint16))
    model.color = ColorFormat.GRAY
    try:
        with pytest.raises(InvalidInputError, match="3 channels"):
            model.submit(frame)
    finally:
        model.color = ColorFormat.BGR
    assert model.drain() == [] and model.predict(frame).label


def test_a_raw_call_of_another_shape_fails_and_the_pool_goes_on(model):
    (frame,) = network_frames(model, 1)
    height, width = model.metadata.input_size
    with pytest.raises(Exception, match=r"(?i)shape|dimension"):
        model.run_network(np.zeros((1, height + 2, width, 3), np.uint8))
    model.submit(frame, "after")
    ((_, after),) = model.drain()
    assert np.array_equal(after.anomaly_map, model.predict(frame).anomaly_map)
