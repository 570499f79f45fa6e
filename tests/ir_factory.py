"""Build a tiny anomaly-edge IR with OpenVINO's opset, no torch: a stand-in model for tests.

Its anomaly map is the per-pixel mean absolute value of the normalised input, box-blurred:
a flat mid-grey frame scores ~0 and anything much brighter or darker lights up. So tests of
the runtime and the stream can draw "defects" (white or black blobs on grey) into frames and
know exactly where the model must find them, in milliseconds and without training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from anomaly_edge.metadata import ModelMetadata

GREY = 128  # the "normal" pixel value of synthetic frames


def build_synthetic_ir(
    path: Path,
    input_size: tuple[int, int] = (64, 64),
    task: str = "segmentation",
    threshold: float = 0.5,
) -> Path:
    h, w = input_size
    image = ops.parameter([1, 3, h, w], ov.Type.f32, name="image")
    deviation = ops.reduce_mean(ops.abs(image), np.array([1], dtype=np.int64), keep_dims=True)
    blurred = ops.avg_pool(deviation, [1, 1], [1, 1], [1, 1], [3, 3], exclude_pad=True)
    blurred.output(0).get_tensor().set_names({"anomaly_map"})
    model = ov.Model([blurred], [image], "synthetic_anomaly")
    ModelMetadata(
        model="synthetic",
        backbone="none",
        input_size=(h, w),
        mean=(GREY, GREY, GREY),
        std=(64.0, 64.0, 64.0),
        image_threshold=threshold,
        pixel_threshold=threshold,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
        task=task,
        precision="FP32",
    ).write_to(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path
