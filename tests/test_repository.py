"""Model repository: the layout OVMS and KServe read, versions kept, nothing half-written."""

from __future__ import annotations

import json
import stat

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.repository import publish, resolve_served_model, versions, write_ovms_config


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_versions_count_up_and_earlier_ones_stay(synthetic_ir, tmp_path):
    repo = tmp_path / "repo"
    first = publish(synthetic_ir, repo, "plate")
    first_bytes = first.read_bytes()
    second = publish(synthetic_ir, repo, "plate")
    assert first == repo / "plate" / "1" / "model.xml"
    assert second == repo / "plate" / "2" / "model.xml"
    assert (repo / "plate" / "2" / "model.bin").read_bytes() == synthetic_ir.with_suffix(
        ".bin"
    ).read_bytes()
    assert first.read_bytes() == first_bytes
    assert versions(repo / "plate") == [1, 2]
    assert publish(synthetic_ir, repo, "plate", version=7).parent.name == "7"
    assert publish(synthetic_ir, repo, "plate").parent.name == "8"
    # nothing left over from the staging folders; modes a server running as another user reads
    assert sorted(p.name for p in (repo / "plate").iterdir()) == ["1", "2", "7", "8"]
    assert _mode(repo / "plate" / "1") == 0o755
    assert _mode(first) & 0o044 == 0o044


def test_ovms_config_lists_every_model_and_keeps_user_settings(synthetic_ir, tmp_path):
    repo = tmp_path / "repo"
    publish(synthetic_ir, repo, "plate")
    config_path = repo / "config.json"
    config = json.loads(config_path.read_text())
    assert config == {
        "model_config_list": [
            {
                "config": {
                    "name": "plate",
                    "base_path": "plate",
                    "model_version_policy": {"latest": {"num_versions": 1}},
                }
            }
        ]
    }
    config["model_config_list"][0]["config"]["nireq"] = 4  # a user's own tuning
    config_path.write_text(json.dumps(config))
    publish(synthetic_ir, repo, "tire")
    entries = {
        e["config"]["name"]: e["config"]
        for e in json.loads(config_path.read_text())["model_config_list"]
    }
    assert set(entries) == {"plate", "tire"}
    assert entries["plate"]["nireq"] == 4
    assert entries["tire"]["base_path"] == "tire"
    assert _mode(config_path) == 0o644
    assert [p.name for p in repo.iterdir() if p.name.startswith(".")] == []


def test_existing_version_bad_names_and_foreign_models_are_refused(synthetic_ir, tmp_path):
    repo = tmp_path / "repo"
    publish(synthetic_ir, repo, "plate", version=1)
    before = (repo / "plate" / "1" / "model.xml").stat().st_mtime_ns
    with pytest.raises(InvalidInputError, match="already exists"):
        publish(synthetic_ir, repo, "plate", version=1)
    assert (repo / "plate" / "1" / "model.xml").stat().st_mtime_ns == before
    for name in ("", "a/b", "../x", "name with space"):
        with pytest.raises(InvalidInputError, match="not usable in a URL"):
            publish(synthetic_ir, repo, name)
    for version in (0, -1, True):
        with pytest.raises(InvalidInputError, match="positive integer"):
            publish(synthetic_ir, repo, "plate", version=version)
    with pytest.raises(ModelLoadError, match="does not exist"):
        publish(tmp_path / "missing.xml", repo, "plate")
    foreign = tmp_path / "foreign" / "model.xml"
    _plain_ir(foreign)
    with pytest.raises(ModelLoadError, match="not exported by anomaly-edge"):
        publish(foreign, repo, "plate")
    assert versions(repo / "plate") == [1]


def test_a_broken_config_is_reported_not_overwritten(synthetic_ir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not an OVMS configuration"):
        write_ovms_config(repo)
    assert (repo / "config.json").read_text() == "{not json"


def test_serve_resolves_a_repository_folder_to_its_highest_version(synthetic_ir, tmp_path):
    repo = tmp_path / "repo"
    publish(synthetic_ir, repo, "plate", version=3)
    publish(synthetic_ir, repo, "plate", version=10)
    assert resolve_served_model(repo / "plate") == (repo / "plate" / "10" / "model.xml", "plate")
    assert resolve_served_model(synthetic_ir) == (synthetic_ir, None)
    assert resolve_served_model(synthetic_ir.parent) == (synthetic_ir, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"neither model\.xml nor version"):
        resolve_served_model(tmp_path / "empty")


def test_export_command_publishes_without_the_training_extra(synthetic_ir, tmp_path, capsys):
    repo = tmp_path / "repo"
    args = ["export", "--model", str(synthetic_ir), "--repository", str(repo), "--name", "plate"]
    assert main(args) == ExitCode.OK
    assert main(args) == ExitCode.OK
    assert "version 2" in capsys.readouterr().out
    assert main([*args, "--version", "2"]) == ExitCode.USAGE
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["export", "--model", str(synthetic_ir), "--repository", str(repo)]) == ExitCode.USAGE
    )
    assert "--name" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "none.xml"),
                "--repository",
                str(repo),
                "--name",
                "x",
            ]
        )
        == ExitCode.MODEL
    )
    assert main(["export"]) == ExitCode.USAGE
    assert versions(repo / "plate") == [1, 2]


def _plain_ir(path):
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 8, 8], ov.Type.f32, name="image")
    path.parent.mkdir(parents=True)
    ov.save_model(ov.Model([ops.relu(image)], [image], "plain"), str(path))


def test_deployment_docs_describe_the_repository_layout(synthetic_ir, tmp_path):
    """docs/: the OVMS config has the shape `publish` writes, and the KServe manifests parse
    and point at a repository model folder (the rest needs a cluster)."""
    import yaml

    from tests.conftest import REPO

    docs = REPO / "docs"
    example = json.loads((docs / "ovms-config.json").read_text())["model_config_list"]
    publish(synthetic_ir, tmp_path / "repo", "plate")
    written = json.loads((tmp_path / "repo" / "config.json").read_text())["model_config_list"]
    assert {k: v for k, v in example[0]["config"].items() if k in written[0]["config"]} == written[
        0
    ]["config"]
    services = list(yaml.safe_load_all((docs / "kserve-inferenceservice.yaml").read_text()))
    assert [s["kind"] for s in services] == ["InferenceService", "InferenceService"]
    ovms, ours = (s["spec"]["predictor"] for s in services)
    assert ovms["model"]["protocolVersion"] == "v2"
    assert ovms["model"]["storageUri"].endswith("/plate")
    assert ovms["minReplicas"] >= 2 and ovms["maxReplicas"] >= ovms["minReplicas"]
    container = ours["containers"][0]
    assert container["command"] == ["anomaly-edge", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
