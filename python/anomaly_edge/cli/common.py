"""What every subcommand shares, in one import: exit codes and errors
(:mod:`.exit_codes`), argument types (:mod:`.arg_types`), shared options
(:mod:`.options`), thresholds (:mod:`.thresholds`) and MODEL (:mod:`.model_arg`).

The parts live in those modules, which never import this one (so there is no import
circle); this module only gathers them, and keeps the names commands have always imported.
"""

from __future__ import annotations

from anomaly_edge.cli.arg_types import (
    finite_float,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    unit_float,
)
from anomaly_edge.cli.exit_codes import (
    CliError,
    ExitCode,
    exit_code_for,
    require_extra,
    require_serve_extra,
    require_train_extra,
)
from anomaly_edge.cli.model_arg import (
    add_model_argument,
    add_remote_option,
    given_model,
    is_remote_model,
    is_url,
    load_model,
    model_path,
    open_remote_model,
)
from anomaly_edge.cli.options import (
    TASKS,
    DeprecatedAlias,
    add_device_argument,
    add_hidden_alias,
    add_min_area_argument,
    add_num_requests_argument,
    add_task_argument,
    check_device,
    check_output_file,
    check_output_folder,
    report,
)
from anomaly_edge.cli.thresholds import (
    add_threshold_arguments,
    apply_thresholds,
    check_thresholds,
    raw_threshold,
    thresholds_given,
)

__all__ = [
    "TASKS",
    "CliError",
    "DeprecatedAlias",
    "ExitCode",
    "add_device_argument",
    "add_hidden_alias",
    "add_min_area_argument",
    "add_model_argument",
    "add_num_requests_argument",
    "add_remote_option",
    "add_task_argument",
    "add_threshold_arguments",
    "apply_thresholds",
    "check_device",
    "check_output_file",
    "check_output_folder",
    "check_thresholds",
    "exit_code_for",
    "finite_float",
    "given_model",
    "is_remote_model",
    "is_url",
    "load_model",
    "model_path",
    "non_negative_float",
    "non_negative_int",
    "open_remote_model",
    "port",
    "positive_float",
    "positive_int",
    "raw_threshold",
    "report",
    "require_extra",
    "require_serve_extra",
    "require_train_extra",
    "thresholds_given",
    "unit_float",
]
