"""Open a model by what the user names: :func:`open_model`.

The one place that knows the backends: a path (an IR's ``.xml`` or its folder) runs here on
OpenVINO (:class:`~anomaly_edge.AnomalyModel`); a URL, or a list of them (replicas), runs on
a v2 model server (:class:`~anomaly_edge.remote.RemoteAnomalyModel`). Either way the result
is a :class:`~anomaly_edge.core.Model`, and predictions of the same frame are equal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from anomaly_edge.core import Model
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.v2_protocol import is_url


def open_model(
    model: str | os.PathLike[str] | Sequence[str],
    device: str | None = None,
    *,
    name: str | None = None,
    **options: Any,
) -> Model:
    """Open ``model``, wherever its network runs.

    Args:
        model: an IR's ``model.xml`` or the folder holding it; or a model server's URL
            (``http://host:8080``, ``http://host:8080/v2/models/NAME``, ``grpc://host:8081``),
            or a list of URLs (replicas of one model).
        device: the OpenVINO device for a local model (default ``"AUTO"``); a remote model
            runs where the server put it, so it takes none.
        name: the model's name on the server (remote only; default from the URL).
        options: the settings both backends take (``task``, ``image_threshold``,
            ``pixel_threshold``, ``min_area``, ``color``, ``num_requests``, ``max_pending``)
            and those of the backend in use (see :class:`~anomaly_edge.AnomalyModel` and
            :class:`~anomaly_edge.remote.RemoteAnomalyModel`).

    Raises:
        ModelLoadError: the model cannot be loaded (missing file, not an anomaly-edge model,
            or not on the server).
        ServerUnavailableError: no server of the list answered.
        InvalidInputError: a bad setting, or an option the backend does not take.
    """
    if is_url(model):
        if device is not None:
            raise InvalidInputError(
                f"device={device!r} applies to a local model; the server chooses the device "
                "of a remote one (e.g. `anomaly-edge serve --device GPU`)"
            )
        from anomaly_edge.remote import RemoteAnomalyModel

        urls = [model] if isinstance(model, str) else list(model)  # type: ignore[arg-type]
        return _made(RemoteAnomalyModel, urls, name, **options)
    if isinstance(model, (list, tuple)):
        raise InvalidInputError(
            f"a list of models must be model server URLs (http://, grpc://), got {model!r}"
        )
    if name is not None:
        raise InvalidInputError(
            "name= names a model on a server; a local model is named by its path"
        )
    from anomaly_edge.model import AnomalyModel

    return _made(AnomalyModel, model, device or "AUTO", **options)


def _made(cls: Any, *args: Any, **options: Any) -> Model:
    try:
        made: Model = cls(*args, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        # an option this backend does not take
        raise InvalidInputError(f"{cls.__name__}: {exc}") from None
    return made
