"""The exceptions users catch."""


class AnomalyEdgeError(Exception):
    """Base class of every error anomaly-edge raises on purpose.

    The message always says what was wrong and what to do about it.
    """


class ModelLoadError(AnomalyEdgeError):
    """An IR could not be read, or lacks the metadata anomaly-edge needs."""


class InvalidInputError(AnomalyEdgeError, ValueError):
    """An image, frame or argument handed to the runtime is not usable."""
