"""PatchCore: coreset selection, the kNN score and its re-weighting, export and the plug-in."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.cli.main import main  # noqa: E402
from anomaly_edge.train import train  # noqa: E402
from anomaly_edge.train.models.patchcore.coreset import (  # noqa: E402
    StreamingCoreset,
    greedy_coreset,
)
from anomaly_edge.train.models.patchcore.model import Patchcore  # noqa: E402
from anomaly_edge.train.models.patchcore.options import PatchcoreOptions  # noqa: E402
from tests.test_data_factory import make_category  # noqa: E402

FAST = {"backbone": "efficientnet_lite0", "image_size": 64}


def clusters(count: int, per: int, dims: int = 16, seed: int = 0) -> torch.Tensor:
    """``count`` tight clusters of ``per`` points each, far apart."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(count, dims, generator=generator) * 100.0
    noise = torch.randn(count, per, dims, generator=generator) * 0.01
    return (centres[:, None, :] + noise).reshape(-1, dims)


def fitted_patchcore(neighbours: int = 9, blur_sigma: float = 0.0, **kwargs) -> Patchcore:
    torch.manual_seed(0)  # the random backbone
    model = Patchcore(
        "resnet18",
        (64, 64),
        pretrained=False,
        neighbours=neighbours,
        blur_sigma=blur_sigma,
        **kwargs,
    )
    generator = torch.Generator().manual_seed(1)
    model.fit([torch.randn(6, 3, 64, 64, generator=generator)])
    return model


# ---- coreset ------------------------------------------------------------------------------------


def test_greedy_coreset_takes_one_point_of_every_cluster_first():
    points = clusters(6, 20)
    chosen = greedy_coreset(points, 6, projection_dim=8, seed=3)
    assert sorted((chosen // 20).tolist()) == list(range(6))
    assert torch.equal(chosen, greedy_coreset(points, 6, projection_dim=8, seed=3))
    assert torch.equal(greedy_coreset(points, 500), torch.arange(120))  # more than there are
    with pytest.raises(ValueError, match="at least one patch"):
        greedy_coreset(points, 0)


def test_streaming_coreset_bounds_its_pool_and_keeps_the_ratio():
    grouped = clusters(8, 50, dims=32)
    points = grouped[torch.randperm(400, generator=torch.Generator().manual_seed(0))]
    pool = StreamingCoreset(0.05, projection_dim=16, pool_limit=120, seed=0)
    held = []
    for part in points.split(40):
        pool.add(part)
        held.append(pool.rows)
    # full at 120 rows: the newest reduced to twice the ratio of them and at least twice the
    # bank so far (12, then 23 and 32 beside them), then all 120 held (the picks fill the
    # buffer) to 37
    assert max(held) <= 120 and pool.chunks_reduced == 4 and pool._capacity == 120
    bank = pool.finish()
    assert bank.shape == (math.ceil(400 * 0.05), 32) and pool.seen == 400
    # bank rows are training patches (stored in float16)
    assert torch.cdist(bank, points.half().float()).amin(dim=1).max() == 0.0
    # the reductions still cover every cluster: each keeps its farthest-apart points
    nearest_centre = torch.cdist(bank, grouped.reshape(8, 50, 32).mean(1)).argmin(1)
    assert set(nearest_centre.tolist()) == set(range(8))
    capped = StreamingCoreset(0.2, projection_dim=16, pool_limit=120, max_count=9)
    after = []
    for row in torch.cat([points, points]).split(1):
        reductions = capped.chunks_reduced
        capped.add(row)
        if capped.chunks_reduced > reductions:
            after.append(capped.rows)
    # a reduction keeps twice the ratio of the rows it reduces (48 of 120, then 29 of the
    # newest 72) and at least twice the capped bank (18 of the newest 43); once the newest
    # are too few to free half, everything held is reduced (48 of 120); then the new row
    assert after[:4] == [49, 78, 96, 49] and capped._capacity == 120
    assert capped.finish().shape == (9, 32)  # the cap, not ceil(400 * 0.2) = 80
    with pytest.raises(ValueError, match="coreset ratio"):
        StreamingCoreset(1.5)
    with pytest.raises(ValueError, match="max_count=0"):
        StreamingCoreset(0.1, max_count=0)
    with pytest.raises(ValueError, match="no images"):
        StreamingCoreset(0.1).finish()


def test_streaming_coreset_holds_more_where_a_reduction_would_free_too_little():
    points = clusters(8, 50, dims=32)
    pool = StreamingCoreset(0.5, projection_dim=16, pool_limit=120)  # twice the bank: all
    for part in points.split(40):
        pool.add(part)
    assert pool.chunks_reduced == 0 and pool.rows == 400 and pool._capacity >= 400
    assert pool.finish().shape == (200, 32)


def test_streaming_coreset_without_reductions_is_one_greedy_pass():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(400, 32, generator=generator).half().float()  # exact in float16
    pool = StreamingCoreset(0.05, projection_dim=16, pool_limit=1000, seed=4)
    for part in points.split(64):
        pool.add(part)
    chosen = greedy_coreset(points, 20, projection_dim=16, seed=4)
    assert pool.chunks_reduced == 0
    assert torch.equal(pool.finish(), points[chosen])


# ---- the score ----------------------------------------------------------------------------------


def reference_scores(model: Patchcore, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the paper's score, the plain nearest distance), written out with cdist and topk
    (independent of forward's matrix products)."""
    n = x.shape[0]
    with torch.no_grad():
        patches = model.patches(x).reshape(n, -1, model.dims).double()
        bank = (model.bank + model.centre).double()  # as fitted
        distance = torch.cdist(patches, bank[None].expand(n, -1, -1))  # [n, cells, M]
        nearest, index = distance.min(dim=2)
        if model.neighbours == 1:
            return nearest, nearest
        top = nearest.argmax(dim=1)
        weights = []
        for i in range(n):
            centre = bank[index[i, top[i]]]
            support = torch.cdist(centre[None], bank)[0].topk(model.neighbours, largest=False)
            d = torch.cdist(patches[i, top[i]][None], bank[support.indices])[0]
            weights.append(1.0 - torch.softmax(d, dim=0)[0])
        return nearest * torch.stack(weights)[:, None], nearest


@pytest.mark.parametrize("neighbours", [1, 3])
def test_patch_scores_are_the_papers_nearest_neighbour_score(neighbours):
    model = fitted_patchcore(neighbours)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        scores = model.patch_scores(x).double()
    expected, plain = reference_scores(model, x)
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=1e-3)
    if neighbours > 1:  # the weight is below 1: it changes the score
        assert (scores.max(1).values < plain.max(1).values).all()


def test_eager_scoring_in_blocks_gives_the_same_scores(monkeypatch):
    from anomaly_edge.train.models.patchcore import model as patchcore_model

    model = fitted_patchcore(3)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model.patch_scores(x)
        monkeypatch.setattr(patchcore_model, "EAGER_DISTANCES", 5 * model.bank.shape[0])
        blocks = model.patch_scores(x)  # 5 patches a block
    torch.testing.assert_close(blocks, whole, rtol=1e-4, atol=1e-4)  # another GEMM blocking


def test_a_training_patch_scores_near_zero_and_the_map_has_the_input_size():
    model = fitted_patchcore(1, coreset_ratio=1.0)  # every training patch in the bank
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # the fit's images
    with torch.no_grad():
        novel = model.patch_scores(torch.randn(2, 3, 64, 64)).mean()
        # zero up to float32 rounding in |x|^2 - 2 x.m + |m|^2
        assert model.patch_scores(x).abs().max() < 0.01 * novel
        assert model(x).shape == (6, 1, 64, 64)
    with pytest.raises(RuntimeError, match="not fitted"):
        Patchcore("resnet18", (64, 64), pretrained=False)(x)
    with pytest.raises(ValueError, match="expects"):
        model.fit([torch.zeros(1, 3, 32, 32)])


def test_fp16_ir_has_the_bank_in_half_precision_and_matches_torch(tmp_path):
    ov = pytest.importorskip("openvino")
    from anomaly_edge.metadata import ModelMetadata
    from anomaly_edge.train.export import compare_maps, export_ir

    model = fitted_patchcore(3, blur_sigma=4.0)
    mean = std = (1.0, 1.0, 1.0)
    metadata = ModelMetadata(
        "patchcore", "resnet18", (64, 64), mean, std, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0
    )
    xml = export_ir(model, metadata, tmp_path, precision="FP16")
    images = [
        np.random.default_rng(i).normal(size=(1, 3, 64, 64)).astype(np.float32) for i in (1, 2)
    ]
    parity = compare_maps(model, xml, images)
    assert parity["correlation"] > 0.999 and parity["max_score_rel_diff"] < 0.01
    bank_shape = list(model.bank_m2.shape)
    constants = [
        op
        for op in ov.Core().read_model(xml).get_ordered_ops()
        if op.get_type_name() == "Constant" and list(op.get_output_shape(0)) == bank_shape
    ]
    assert constants and all(c.get_output_element_type(0) == ov.Type.f16 for c in constants)


# ---- the plug-in --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_category(
        tmp_path_factory.mktemp("data") / "cat", train=10, good=6, defects={"scratch": 5, "spot": 5}
    )


def test_train_fits_exports_and_the_checkpoint_rebuilds_it(category, tmp_path):
    pytest.importorskip("openvino")
    from anomaly_edge import AnomalyModel
    from anomaly_edge.train.checkpoint import load_checkpoint

    result = train(category, model="patchcore", out=tmp_path / "run", **FAST)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "patchcore" and metrics["image_auroc"] > 0.9
    settings = metrics["model_settings"]
    assert settings["layers"] == ["stage3", "stage5"] and settings["neighbours"] == 9
    assert settings["bank_size"] == math.ceil(settings["patches_seen"] * 0.1)
    assert metrics["fit_peak_rss_mb"] > 0
    rebuilt, metadata = load_checkpoint(tmp_path / "run")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), result.model(x))
    assert metadata.model == "patchcore"
    with AnomalyModel(result.ir_path) as model:
        defect = next((category / "test" / "scratch").iterdir())
        prediction = model.predict(defect)
    assert prediction.label and prediction.boxes  # an anomaly carries a box


def test_tiled_training_shares_one_bank(tmp_path):
    pytest.importorskip("openvino")
    from anomaly_edge import AnomalyModel

    data = make_category(tmp_path / "big", train=4, good=3, defects={"spot": 3}, size=128)
    result = train(data, model="patchcore", image_size=64, tile="2x2", out=tmp_path / "run")
    assert result.metrics["tiles"]["grid"] == [2, 2]
    assert result.metrics["tiles"]["gaussians"] == "shared"
    with AnomalyModel(result.ir_path) as model:
        prediction = model.predict(np.full((128, 128, 3), 120, dtype=np.uint8))
    assert np.isfinite(prediction.raw_score)


def test_cli_trains_patchcore_with_its_flags_and_refuses_bad_ones(category, tmp_path, capsys):
    args = ["train", "--data", str(category), "--image-size", "64", "--quiet", "--no-export"]
    out = tmp_path / "cli"
    argv = ["--arch", "patchcore", "--coreset-ratio", "0.25", "--max-bank", "100"]
    assert main([*args, "--out", str(out), *argv, "--pool-limit", "200"]) == 0
    settings = json.loads((out / "metrics.json").read_text())["model_settings"]
    assert settings["coreset_ratio"] == 0.25 and settings["neighbours"] == 9
    assert settings["max_bank"] == 100 and settings["bank_size"] == 100
    assert settings["patches_seen"] > 200 and settings["chunks_reduced"] >= 1  # 200 held
    assert main([*args, "--out", str(tmp_path / "a"), "--coreset-ratio", "0.2"]) == 2  # padim
    assert "--coreset-ratio applies to --arch patchcore only" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"coreset_ratio must be in \(0, 1\]"):
        train(
            category, model="patchcore", options=PatchcoreOptions(coreset_ratio=2.0), export=False
        )


def test_the_bank_is_capped_by_a_frames_distance_budget_unless_max_bank_says_otherwise():
    from anomaly_edge.train.models.patchcore.model import DISTANCE_BUDGET

    wide = Patchcore("resnet18", (64, 128), pretrained=False)  # 8 x 16 patches a frame
    assert wide.max_bank == DISTANCE_BUDGET // 128
    model = fitted_patchcore(1, coreset_ratio=1.0, max_bank=50)  # 6 images x 64 patches
    assert model.bank.shape[0] == 50 and model.fit_report["max_bank"] == 50
    assert model.fit_report["patches_seen"] == 384
    assert model.init_kwargs["max_bank"] == 50
    with pytest.raises(ValueError, match="max_bank must be 1 or more"):
        Patchcore("resnet18", (64, 64), pretrained=False, max_bank=0)


def test_pruned_greedy_chooses_exactly_what_plain_greedy_chooses():
    from anomaly_edge.train.models.patchcore.coreset import project

    generator = torch.Generator().manual_seed(2)
    latent = torch.randn(3000, 6, generator=generator) @ torch.randn(6, 40, generator=generator)
    features = latent + 0.05 * torch.randn(3000, 40, generator=generator)
    projected = project(features, 16, seed=5)
    squares = (projected * projected).sum(dim=1)
    nearest = torch.full((3000,), math.inf)
    current = int(torch.randint(3000, (1,), generator=torch.Generator().manual_seed(5)))
    plain = []
    for _ in range(300):  # every row, every step
        plain.append(current)
        distance = squares - 2.0 * projected @ projected[current] + squares[current]
        nearest = torch.minimum(nearest, distance)
        current = int(nearest.argmax())
    assert greedy_coreset(features, 300, projection_dim=16, seed=5).tolist() == plain
