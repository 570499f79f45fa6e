"""STFPM: Student-Teacher Feature Pyramid Matching (Wang, Wu, Cui and Lu, BMVC 2021).

A frozen, ImageNet-pretrained teacher and a randomly initialised student of the same architecture
see the same normal images, and the student learns to reproduce the teacher's feature maps at
three scales; where they disagree the image is anomalous. This module is the public API:

* :mod:`.models.stfpm.model`: the anomaly module :class:`Stfpm`, its loss and its builders;
* :mod:`.models.stfpm.training`: the training loop (:func:`fit_stfpm`, :func:`train_stfpm`).

The model lives in its plug-in folder, :mod:`anomaly_edge.train.models.stfpm`.
"""

from __future__ import annotations

from anomaly_edge.train.models.stfpm.history import StfpmHistory
from anomaly_edge.train.models.stfpm.model import (
    BLUR_SIGMA,
    FINE_LAYER_WEIGHT,
    STUDENT_BN_MOMENTUM,
    Combine,
    Stfpm,
    build_stfpm,
    layer_distance,
    rebuild_stfpm,
    stfpm_loss,
)
from anomaly_edge.train.models.stfpm.training import fit_stfpm, train_stfpm

__all__ = [
    "BLUR_SIGMA",
    "FINE_LAYER_WEIGHT",
    "STUDENT_BN_MOMENTUM",
    "Combine",
    "Stfpm",
    "StfpmHistory",
    "build_stfpm",
    "fit_stfpm",
    "layer_distance",
    "rebuild_stfpm",
    "stfpm_loss",
    "train_stfpm",
]
