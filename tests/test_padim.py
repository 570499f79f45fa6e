"""PaDiM: streaming statistics, the distance it computes, determinism, export, detection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.train.models.padim.model import Padim, default_upsample  # noqa: E402
from anomaly_edge.train.resample import gaussian_kernel_1d  # noqa: E402
from anomaly_edge.train.running_gaussian import RunningGaussian  # noqa: E402

SIZE = (64, 64)


def tiny_padim(seed: int = 0, channels: int = 40) -> Padim:
    torch.manual_seed(123)  # the random backbone; ``seed`` picks the channels
    return Padim("resnet18", SIZE, n_channels=channels, seed=seed, pretrained=False)


def images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *SIZE, generator=generator)


def test_running_gaussian_matches_direct_covariance():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 700, 12, generator=generator, dtype=torch.float64) * 3 + 50
    x[:, :, 1] = 2 * x[:, :, 0] + 0.05 * torch.randn(40, 700, generator=generator)
    stats = RunningGaussian(700, 12, workers=2)
    for start in range(0, 40, 6):  # uneven batches
        stats.update(x[start : start + 6].float())
    mean, whiten_t = torch.empty(700, 1, 12), torch.empty(700, 12, 12)
    stats.whiten_into(mean, whiten_t, regularization=0.01)
    for p in (0, 511, 512, 699):  # both sides of a chunk boundary
        cov = torch.cov(x[:, p].T) + 0.01 * torch.eye(12, dtype=torch.float64)
        w = whiten_t[p].T.double()
        torch.testing.assert_close(w.T @ w, torch.linalg.inv(cov), rtol=2e-3, atol=1e-3)
        assert torch.equal(w, w.tril())  # the inverse Cholesky factor is lower triangular
        torch.testing.assert_close(mean[p, 0].double(), x[:, p].mean(0), rtol=1e-6, atol=1e-4)


def test_running_gaussian_errors():
    stats = RunningGaussian(4, 3)
    with pytest.raises(ValueError, match=r"expected \[B, 4, 3\]"):
        stats.update(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="at least one image"):
        stats.whiten_into(torch.empty(4, 1, 3), torch.empty(4, 3, 3))


def test_fit_is_the_same_in_one_batch_or_many():
    data = images(12)
    whole = tiny_padim().fit([data])
    pieces = tiny_padim().fit([data[i : i + 5] for i in range(0, 12, 5)], extract_batch=2)
    torch.testing.assert_close(whole.mean, pieces.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole.whiten_t, pieces.whiten_t, rtol=1e-4, atol=1e-4)


def test_map_is_the_blurred_upsampled_mahalanobis_distance():
    train = images(16)
    model = tiny_padim(channels=20).fit([train])
    x = images(2, seed=9)
    with torch.inference_mode():
        out = model(x)
        embedding = model.embed(x)  # [2, d, h, w]
        trained = torch.cat([model.embed(train)])
    assert out.shape == (2, 1, *SIZE) and out.dtype == torch.float32
    h, w = model.feature_size
    e = trained.flatten(2).double()  # [N, d, P]
    expected = torch.empty(2, h * w, dtype=torch.float64)
    for p in range(h * w):
        cov = torch.cov(e[:, :, p].T) + 0.01 * torch.eye(e.shape[1], dtype=torch.float64)
        delta = embedding.flatten(2)[:, :, p].double() - e[:, :, p].mean(0)
        expected[:, p] = torch.einsum("nd,de,ne->n", delta, torch.linalg.inv(cov), delta).sqrt()
    expected = torch.nn.functional.interpolate(
        expected.float().reshape(2, 1, h, w), size=SIZE, mode="bilinear", align_corners=False
    )
    assert model.blur_sigma == 2.0  # the default, chosen on all four shared categories
    torch.testing.assert_close(out, reference_blur(expected, 2.0), rtol=1e-3, atol=1e-3)


def reference_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The paper's blur, written with torch ops: reflected borders, a separable Gaussian."""
    kernel = gaussian_kernel_1d(sigma)
    r = (kernel.numel() - 1) // 2
    maps = torch.nn.functional.pad(maps, (r, r, r, r), mode="reflect")
    maps = torch.nn.functional.conv2d(maps, kernel.reshape(1, 1, 1, -1))
    return torch.nn.functional.conv2d(maps, kernel.reshape(1, 1, -1, 1))


def test_channel_choice_is_seeded_and_checked():
    a, b, c = tiny_padim(seed=1), tiny_padim(seed=1), tiny_padim(seed=2)
    picks = [[getattr(m, f"channels_{i}").tolist() for i in range(3)] for m in (a, b, c)]
    assert picks[0] == picks[1] != picks[2]
    assert sum(len(p) for p in picks[0]) == 40
    with pytest.raises(ValueError, match=r"n_channels must be in 1\.\.448"):
        tiny_padim(channels=449)


def test_deeper_layers_are_upsampled_per_backbone_default_or_as_asked():
    assert tiny_padim().upsample == "nearest"  # ResNets: as the paper and anomalib
    assert default_upsample("efficientnet_lite0") == "bilinear"
    torch.manual_seed(123)
    model = Padim("resnet18", SIZE, n_channels=448, pretrained=False, upsample="bilinear", pool=1)
    assert model.init_kwargs["upsample"] == "bilinear"
    x = images(1)
    with torch.inference_mode():
        deepest = model.backbone(x)[-1]
        embedding = model.embed(x)
    expected = torch.nn.functional.interpolate(
        deepest, size=model.feature_size, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(embedding[:, -deepest.shape[1] :], expected)
    with pytest.raises(ValueError, match="upsample must be one of nearest, bilinear"):
        Padim("resnet18", SIZE, pretrained=False, upsample="cubic")


def test_blur_kernel():
    kernel = gaussian_kernel_1d(4.0)
    assert kernel.numel() == 33 and kernel.sum().item() == pytest.approx(1.0)
    assert gaussian_kernel_1d(0).tolist() == [1.0]


def test_unfitted_model_refuses_to_predict_and_bad_input_is_reported():
    model = tiny_padim()
    with pytest.raises(RuntimeError, match="not fitted"):
        model(images(1))
    with pytest.raises(ValueError, match=r"expects \[N, 3, 64, 64\]"):
        model.fit([torch.zeros(1, 3, 32, 32)])
    with pytest.raises(ValueError, match="no images"):
        model.fit([])


def test_defects_score_higher_than_normal_images(tmp_path):
    from anomaly_edge.train.data import ImageDataset, iter_batches, scan_category
    from tests.test_data_factory import make_category

    data = scan_category(make_category(tmp_path / "cat", train=16, good=4, defects={"d": 4}))
    model = Padim("efficientnet_lite0", SIZE, seed=0)
    mean, std = model.backbone.mean, model.backbone.std
    model.fit(iter_batches(ImageDataset(data.train, SIZE, mean, std), 8))
    batch = next(iter_batches(ImageDataset(data.test, SIZE, mean, std), 8))
    with torch.inference_mode():
        maps = model(batch["image"])[:, 0]
    scores = maps.flatten(1).amax(1)
    labels = batch["label"].bool()
    assert scores[labels].min() > scores[~labels].max()
    masks = batch["mask"][:, 0].bool()
    assert maps[masks].mean() > maps[~masks & labels[:, None, None]].mean()


def test_state_dict_round_trip_rebuilds_offline():
    model = tiny_padim().fit([images(6)])
    rebuilt = Padim(**model.init_kwargs)
    rebuilt.load_state_dict(model.state_dict())
    x = images(1, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_exports_with_openvino_and_matches_torch(isa_level):
    ov = pytest.importorskip("openvino")
    model = tiny_padim(channels=30).fit([images(8)])
    x = images(1, seed=5)
    converted = ov.convert_model(model, example_input=x, input=[1, 3, *SIZE])
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x.numpy())[0]
    with torch.inference_mode():
        expected = model(x).numpy()
    assert result.shape == (1, 1, *SIZE)
    assert all(o.get_partial_shape().is_static for o in converted.outputs)
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-3)


def test_gaussians_sit_on_the_pooled_grid():
    torch.manual_seed(123)
    paper = Padim("resnet18", SIZE, n_channels=40, pretrained=False, pool=1)
    torch.manual_seed(123)
    pooled = Padim("resnet18", SIZE, n_channels=40, pretrained=False, pool=2)
    assert paper.feature_size == (16, 16) and pooled.feature_size == (8, 8)
    assert pooled.mean.shape == (64, 1, 40) and pooled.whiten_t.shape == (64, 40, 40)
    x = images(2, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(
            pooled.embed(x), torch.nn.functional.avg_pool2d(paper.embed(x), 2)
        )


def test_pool_is_checked():
    for bad in (0, 17, 2.5, True, "2"):
        with pytest.raises(ValueError, match="pool must be an integer"):
            Padim("resnet18", SIZE, pretrained=False, pool=bad)
    with pytest.raises(ValueError, match="larger than the 8x8 feature grid"):
        Padim("resnet18", (32, 32), pretrained=False, pool=16)
    assert Padim("resnet18", SIZE, pretrained=False, pool=16).feature_size == (1, 1)


def test_triangle_blocks_cover_every_column_once():
    from anomaly_edge.train.models.padim.model import triangle_blocks

    assert triangle_blocks(80) == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert triangle_blocks(3) == [(0, 1), (1, 2), (2, 3)]
    assert triangle_blocks(1) == [(0, 1)]
    for dims in range(1, 50):
        blocks = triangle_blocks(dims)
        assert blocks[0][0] == 0 and blocks[-1][1] == dims
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(blocks))


def test_partial_pooling_blocks_export_like_torch():
    """An input whose feature grid does not divide by the pool: edge blocks average less."""
    ov = pytest.importorskip("openvino")
    size = (72, 56)  # resnet18 layer1: 18x14, pooled by 4 into 5x4 with partial edge blocks
    torch.manual_seed(123)
    model = Padim("resnet18", size, n_channels=30, pretrained=False, pool=4)
    assert model.feature_size == (5, 4)
    generator = torch.Generator().manual_seed(0)
    model.fit([torch.randn(8, 3, *size, generator=generator)])
    x = torch.randn(1, 3, *size, generator=generator)
    with torch.inference_mode():
        embedding = model.embed(x)
        corner = model.backbone(x)[0][:, model.channels_0, 16:, 12:].mean(dim=(2, 3))
        expected = model(x).numpy()
    torch.testing.assert_close(embedding[:, : corner.shape[1], -1, -1], corner)
    converted = ov.convert_model(model, example_input=x, input=[1, 3, *size])
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x.numpy())[0], expected, rtol=1e-3, atol=1e-3)


def test_checkpoints_from_before_the_pooled_grid_still_load(tmp_path):
    """Checkpoints written before ``pool`` existed (one Gaussian per position, a stored blur
    kernel) rebuild the model they describe."""
    from anomaly_edge.metadata import ModelMetadata
    from anomaly_edge.train.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(123)
    old = Padim("resnet18", SIZE, n_channels=20, pretrained=False, pool=1).fit([images(6)])
    kwargs = {k: v for k, v in old.init_kwargs.items() if k != "pool"}
    state = {**old.state_dict(), "blur_kernel": gaussian_kernel_1d(4.0)}
    metadata = ModelMetadata(
        model="padim",
        backbone="resnet18",
        input_size=SIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        image_threshold=1.0,
        pixel_threshold=1.0,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
    )
    path = save_checkpoint(old, metadata, tmp_path / "checkpoint.pt", init_kwargs=kwargs)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = state
    torch.save(payload, path)
    rebuilt, _ = load_checkpoint(path)
    assert rebuilt.pool == 1 and rebuilt.feature_size == old.feature_size
    x = images(1, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), old(x))
