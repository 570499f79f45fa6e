"""Each model's knobs travel as one object (PadimOptions / StfpmOptions), and a progress
factory given to train() reaches every stage, STFPM's epochs included."""

from __future__ import annotations

import pytest

from anomaly_edge.train import PadimOptions, StfpmOptions, train
from tests.test_data_factory import make_category


def test_only_the_fields_set_reach_the_training_loop():
    assert StfpmOptions().fit_arguments() == {}
    assert StfpmOptions(cosine=True, max_steps=50).fit_arguments() == {
        "cosine": True,
        "max_steps": 50,
    }
    # an epoch count asked for is run in full: the default step cap does not cut it
    assert StfpmOptions(max_epochs=3, cosine=True).fit_arguments() == {
        "max_epochs": 3,
        "max_steps": None,
        "cosine": True,
    }
    assert StfpmOptions(max_epochs=3, max_steps=10).fit_arguments() == {
        "max_epochs": 3,
        "max_steps": 10,
    }


@pytest.mark.parametrize(
    ("model", "options"), [("stfpm", PadimOptions()), ("padim", StfpmOptions())]
)
def test_options_of_the_other_model_are_refused_before_any_work(tmp_path, model, options):
    with pytest.raises(ValueError, match=f"options for {model} must be"):
        train(tmp_path / "no-such-folder", model=model, options=options, export=False)


def test_a_progress_factory_sees_stfpm_epochs(tmp_path):
    root = tmp_path / "cat"
    make_category(root, train=6, good=2, defects={"d": 2})
    seen: list[tuple[str, int]] = []

    class Bar:
        def __init__(self, description: str, total: int) -> None:
            seen.append((description, total))

        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    result = train(root, model="stfpm", image_size=64,
                   options=StfpmOptions(max_epochs=2, map_layers=2, fine_layer_weight=0.75),
                   export=False, progress=Bar)  # fmt: skip
    assert ("STFPM epochs", 2) in seen
    assert result.model.map_layers == 2  # the options reached the model
    assert result.model.fine_layer_weight == 0.75


@pytest.mark.parametrize(("flag", "expected"), [
    ([], StfpmOptions()),
    (["--lr-schedule", "constant"], StfpmOptions(cosine=False)),
    (["--lr-schedule", "cosine"], StfpmOptions(cosine=True)),
    (["--fine-layer-weight", "1"], StfpmOptions(fine_layer_weight=1.0)),
    (["--fine-layer-weight", "0"], StfpmOptions(fine_layer_weight=0.0)),
])  # fmt: skip
def test_the_cli_stfpm_map_and_schedule_flags_reach_stfpm_options(
    tmp_path, monkeypatch, flag, expected
):
    import anomaly_edge.train.api as api
    from anomaly_edge.cli.main import main

    seen = []

    def fake_train(*args, options=None, **kwargs):
        seen.append(options)
        raise ValueError("stop here: the options are all this test needs")

    monkeypatch.setattr(api, "train", fake_train)
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--arch", "stfpm"]
    main([*argv, *flag])
    assert seen == [expected]


def test_metrics_json_records_the_stfpm_settings_with_defaults_resolved(tmp_path):
    root = tmp_path / "cat"
    make_category(root, train=6, good=2, defects={"d": 2})
    options = StfpmOptions(max_epochs=2, fine_layer_weight=1.0, cosine=False)
    settings = train(root, model="stfpm", image_size=64, options=options, export=False,
                     progress=False).metrics["model_settings"]  # fmt: skip
    assert settings["fine_layer_weight"] == 1.0 and settings["map_layers"] is None
    assert settings["layers"] and settings["combine"] == "product"
    schedule = settings["schedule"]
    assert schedule["cosine"] is False and schedule["max_epochs"] == 2
    assert schedule["max_steps"] is None  # an epoch count given alone runs in full
    assert schedule["lr"] == 0.4  # a default, resolved
    assert settings["epochs_run"] == 2


def test_metrics_json_records_the_padim_settings_with_defaults_resolved(tmp_path):
    import json

    root = tmp_path / "cat"
    make_category(root, train=6, good=2, defects={"d": 2})
    result = train(root, model="padim", image_size=64, options=PadimOptions(pool=1),
                   out=tmp_path / "run", export=False, progress=False)  # fmt: skip
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["model_settings"]
    assert settings == result.metrics["model_settings"]
    assert settings["pool"] == 1
    assert isinstance(settings["n_channels"], int) and settings["n_channels"] > 0
    assert "schedule" not in settings  # PaDiM has no training schedule
