"""STFPM: loss and map arithmetic, training, early stopping, determinism, the module contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.train import stfpm  # noqa: E402
from anomaly_edge.train.backbones import build_backbone  # noqa: E402
from anomaly_edge.train.models.stfpm import training as stfpm_training  # noqa: E402

SIZE = 64
_NETWORKS: dict[int, torch.nn.Module] = {}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_resnet18(seed: int) -> torch.nn.Module:
    """A random-init ResNet18 extractor, built once per seed (construction is the slow part)."""
    if seed not in _NETWORKS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _NETWORKS[seed] = build_backbone("resnet18", pretrained=False)
    return copy.deepcopy(_NETWORKS[seed])


def tiny_model(seed: int = 0, combine: str = "product") -> stfpm.Stfpm:
    """A random-init ResNet18 pair: no weights to find, a few ms per 64x64 image."""
    return stfpm.Stfpm(random_resnet18(1000), random_resnet18(seed), combine=combine)


def upsampled_distances(t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's distance map brought to 8x8, as the map arithmetic sees it."""
    return [
        torch.nn.functional.interpolate(
            stfpm.layer_distance(a, b), size=(8, 8), mode="bilinear", align_corners=False
        )
        for a, b in zip(t, s, strict=True)
    ]


def textured_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 [N,3,64,64] stripes with noise: 'normal' images with some structure to learn."""
    rng = np.random.default_rng(seed)
    x = np.arange(SIZE)
    stripes = (np.sin(x / 3.0)[None, :] * 60 + 128).repeat(SIZE, 0)
    images = stripes[None, None] + rng.normal(0, 12, (count, 3, SIZE, SIZE))
    return torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8))


def batches(images: torch.Tensor, size: int = 4) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def fit(model: stfpm.Stfpm, **kwargs) -> stfpm.StfpmHistory:
    settings = {"max_epochs": 2, "patience": 10, "lr": 0.05, "progress": False, "seed": 0}
    settings.update(kwargs)
    return stfpm.train_stfpm(
        model, batches(textured_images(8)), batches(textured_images(4, seed=1)), **settings
    )


# ---- arithmetic --------------------------------------------------------------------------


def test_layer_distance_is_half_squared_distance_of_unit_vectors():
    t = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert stfpm.layer_distance(t, 3 * t).item() == pytest.approx(0.0)  # scale-free
    assert stfpm.layer_distance(t, -t).item() == pytest.approx(2.0)  # opposite: |2u|^2 / 2
    s = torch.tensor([0.0, 5.0]).view(1, 2, 1, 1)
    assert stfpm.layer_distance(t, s).item() == pytest.approx(1.0)  # orthogonal
    assert stfpm.layer_distance(torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)).shape == (
        2,
        1,
        5,
        7,
    )


def test_loss_sums_images_and_averages_positions():
    t = [torch.randn(1, 4, 6, 6), torch.randn(1, 8, 3, 3)]
    s = [torch.randn(1, 4, 6, 6), torch.randn(1, 8, 3, 3)]
    one = stfpm.stfpm_loss(t, s)
    expected = sum(stfpm.layer_distance(a, b).mean() for a, b in zip(t, s, strict=True))
    assert one.item() == pytest.approx(float(expected), rel=1e-6)
    doubled = stfpm.stfpm_loss([torch.cat([a, a]) for a in t], [torch.cat([b, b]) for b in s])
    assert doubled.item() == pytest.approx(2 * one.item(), rel=1e-6)


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_map_combines_upsampled_layer_distances(combine):
    model = tiny_model(combine=combine)
    t = [torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    s = [torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    amap = model.distances(t, s, (8, 8))
    ups = upsampled_distances(t, s)
    # The finest layer is weighted: its power in the product, its multiple in the sum.
    w = stfpm.FINE_LAYER_WEIGHT
    expected = ups[0] ** w * ups[1] if combine == "product" else ups[0] * w + ups[1]
    torch.testing.assert_close(amap, expected)


def test_fine_layer_weight_one_is_the_plain_product_and_zero_drops_the_layer():
    t = [torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    s = [torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    ups = upsampled_distances(t, s)
    teacher, student = random_resnet18(1000), random_resnet18(0)
    plain = stfpm.Stfpm(teacher, student, fine_layer_weight=1.0)
    torch.testing.assert_close(plain.distances(t, s, (8, 8)), ups[0] * ups[1] * ups[2])
    dropped = stfpm.Stfpm(teacher, student, fine_layer_weight=0.0)
    deepest_two = stfpm.Stfpm(teacher, student, map_layers=2)
    torch.testing.assert_close(dropped.distances(t, s, (8, 8)), deepest_two.distances(t, s, (8, 8)))
    half = stfpm.Stfpm(teacher, student, fine_layer_weight=0.5)
    torch.testing.assert_close(half.distances(t, s, (8, 8)), ups[0].sqrt() * ups[1] * ups[2])
    # Left out of the map by map_layers, the finest layer's weight changes nothing.
    both = stfpm.Stfpm(teacher, student, map_layers=2, fine_layer_weight=0.5)
    torch.testing.assert_close(both.distances(t, s, (8, 8)), ups[1] * ups[2])


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "0.5"])
def test_fine_layer_weight_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match="fine_layer_weight must be a finite number >= 0"):
        stfpm.Stfpm(random_resnet18(1000), random_resnet18(0), fine_layer_weight=bad)


def test_map_layers_keeps_the_deepest_layers_only():
    model = stfpm.Stfpm(random_resnet18(1000), random_resnet18(0), map_layers=2)
    t = [torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    s = [torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 2, 2)]
    ups = upsampled_distances(t, s)
    torch.testing.assert_close(model.distances(t, s, (8, 8)), ups[1] * ups[2])
    model.map_layers = None  # all of them, as before the option existed
    w = stfpm.FINE_LAYER_WEIGHT
    torch.testing.assert_close(model.distances(t, s, (8, 8)), ups[0] ** w * ups[1] * ups[2])


@pytest.mark.parametrize("bad", [0, 4, 1.5])
def test_map_layers_outside_the_trained_layers_is_refused(bad):
    with pytest.raises(ValueError, match="map_layers must be between 1 and the 3"):
        stfpm.Stfpm(random_resnet18(1000), random_resnet18(0), map_layers=bad)


# ---- the anomaly-module contract -----------------------------------------------------------


def test_forward_gives_one_raw_map_per_image_at_input_size():
    model = tiny_model()
    x = torch.randn(3, 3, SIZE, 48)
    with torch.no_grad():
        amap = model(x)
    assert amap.shape == (3, 1, SIZE, 48)
    assert amap.dtype == torch.float32
    assert bool((amap >= 0).all())
    assert not model.training


def test_teacher_stays_frozen_and_in_eval_mode():
    model = tiny_model()
    model.train()
    assert model.student.training
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    history = fit(model, max_epochs=1)
    assert history.epochs == 1
    assert not model.training  # handed back ready for inference


def test_teacher_and_student_must_match():
    student = random_resnet18(0)
    student.channels = [64, 128]  # as if built with other layers
    with pytest.raises(ValueError, match="same backbone"):
        stfpm.Stfpm(random_resnet18(1000), student)


def test_openvino_converts_the_module_and_agrees_with_torch(isa_level):
    ov = pytest.importorskip("openvino")
    model = tiny_model()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    # float32 arithmetic: by default OpenVINO runs bf16 on CPUs with AVX512_BF16/AMX (1.7%
    # off here), which is the CPU's choice, not a conversion error
    compiled = ov.compile_model(
        ov.convert_model(model, example_input=x), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    got = compiled(x.numpy())[0]
    assert got.shape == (1, 1, SIZE, SIZE)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * float(expected.max()))


# ---- training ------------------------------------------------------------------------------


def test_training_lowers_the_loss():
    model = tiny_model()
    history = fit(model, max_epochs=4)
    assert history.epochs == 4
    assert history.train_loss[-1] < history.train_loss[0]
    assert min(history.val_loss) < history.val_loss[0]
    assert model.history is history
    assert history.as_dict()["best_epoch"] == history.best_epoch


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(monkeypatch):
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0])  # best at epoch 2, then 3 worse epochs
    snapshots = []

    def fake_val_loss(model, *args):
        snapshots.append(copy.deepcopy(model.student.state_dict()))
        return next(scripted)

    monkeypatch.setattr(stfpm_training, "_evaluate_loss", fake_val_loss)
    model = tiny_model()
    history = fit(model, max_epochs=20, patience=3)
    assert history.stopped_early
    assert history.epochs == 5  # 2 + patience
    assert history.best_epoch == 2
    kept = model.student.state_dict()
    for name, value in kept.items():
        torch.testing.assert_close(value, snapshots[1][name], msg=name)
    assert any(not torch.equal(kept[name], snapshots[-1][name]) for name in kept)  # restored


def test_max_epochs_caps_training_without_early_stop():
    history = fit(tiny_model(), max_epochs=3, patience=50)
    assert history.epochs == 3 and not history.stopped_early


def test_max_steps_caps_training_in_whole_epochs():
    # 8 images in batches of 4: 2 steps an epoch, so 3 steps take 2 epochs
    history = fit(tiny_model(), max_epochs=10, max_steps=3, patience=50, batch_size=4)
    assert history.epochs == 2 and not history.stopped_early
    history = fit(tiny_model(), max_epochs=3, max_steps=None, patience=50, batch_size=4)
    assert history.epochs == 3


def test_epochs_for_a_step_budget():
    assert stfpm_training.epochs_for(30, None, 81) == 30
    assert stfpm_training.epochs_for(30, 600, 6) == 30  # small set: the epoch cap rules
    assert stfpm_training.epochs_for(30, 600, 81) == 8  # large set: ceil(600 / 81)
    assert stfpm_training.epochs_for(30, 10, 81) == 1  # at least one whole epoch


def test_same_seed_same_model_other_seed_other_model():
    images = textured_images(3, seed=5)
    maps = []
    for seed in (0, 0, 1):
        model = tiny_model(seed=seed)
        fit(model, seed=seed)
        with torch.no_grad():
            maps.append(model(images.float()))
    torch.testing.assert_close(maps[0], maps[1], rtol=0, atol=0)
    assert not torch.equal(maps[0], maps[2])


def test_holds_out_training_images_when_no_validation_loader():
    model = tiny_model()
    history = stfpm.train_stfpm(
        model,
        batches(textured_images(10)),
        None,
        max_epochs=1,
        lr=0.05,
        progress=False,
        val_fraction=0.2,
    )
    assert history.epochs == 1 and np.isfinite(history.val_loss[0])


def test_accepts_dict_batches_of_normalised_floats():
    model = tiny_model()
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    normalised = [
        {"image": (b.float() - mean) / std, "label": torch.zeros(len(b))}
        for b in batches(textured_images(8))
    ]
    kept, batch = stfpm_training._collect_images(normalised, "train_loader", mean, std)
    assert kept.dtype == torch.uint8 and batch == 4  # compacted losslessly
    torch.testing.assert_close(kept, textured_images(8))
    history = stfpm.train_stfpm(
        model, normalised, normalised[:1], max_epochs=1, lr=0.05, progress=False
    )
    assert history.epochs == 1


def test_fit_stfpm_builds_a_pretrained_teacher_and_trains():
    model = stfpm.fit_stfpm(
        "efficientnet_lite0",
        batches(textured_images(6)),
        batches(textured_images(2, seed=1)),
        max_epochs=1,
        progress=False,
    )
    assert model.backbone == "efficientnet_lite0"
    assert model.mean == (127.5, 127.5, 127.5)
    assert model.history is not None and model.history.epochs == 1
    with torch.no_grad():
        assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, SIZE, SIZE)


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine():
    rate = stfpm_training._lr_schedule(
        0.4, steps_per_epoch=4, max_epochs=5, warmup_epochs=1, cosine=True
    )
    assert [rate(s) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert rate(4) == pytest.approx(0.4)  # the cosine starts at the peak
    assert rate(12) == pytest.approx(0.2)  # half-way through the 16 decay steps
    assert rate(19) == pytest.approx(0.4 * 0.5 * (1 + np.cos(np.pi * 15 / 16)))
    assert all(rate(s) > rate(s + 1) for s in range(4, 19))
    constant = stfpm_training._lr_schedule(0.4, 4, 5, warmup_epochs=0, cosine=False)
    assert {constant(s) for s in range(20)} == {0.4}


def test_gradient_clipping_bounds_every_step():
    model = tiny_model()
    before = [p.detach().clone() for p in model.student.parameters()]
    history = fit(model, max_epochs=1, lr=0.5, momentum=0.0, weight_decay=0.0, max_grad_norm=1e-6)
    moved = torch.sqrt(
        sum(
            ((p.detach() - b) ** 2).sum()
            for p, b in zip(model.student.parameters(), before, strict=True)
        )
    )
    steps = 2  # 8 images in batches of 4
    assert float(moved) <= steps * 0.5 * 1e-6 * 1.01
    assert history.grad_norm[0] > 1e-6  # the raw norm is recorded, before clipping


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1.0}, "weight"),
        ({"patience": 0}, "patience"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup_epochs": -1.0}, "warmup_epochs"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_settings_are_named(setting, message):
    with pytest.raises(ValueError, match=message):
        fit(tiny_model(), **setting)


def test_bad_loaders_get_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="no images"):
        stfpm.train_stfpm(model, [], None, progress=False)
    with pytest.raises(TypeError, match=r"\[N,3,H,W\]"):
        stfpm.train_stfpm(model, [torch.zeros(2, 1, 8, 8)], None, progress=False)
    with pytest.raises(TypeError, match="'image'"):
        stfpm.train_stfpm(model, [{"pixels": torch.zeros(2, 3, 8, 8)}], None, progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        stfpm.train_stfpm(model, [textured_images(1)], None, progress=False)
    with pytest.raises(ValueError, match="different sizes"):
        stfpm.train_stfpm(
            model, [textured_images(2), textured_images(2)[..., :32]], None, progress=False
        )
    with pytest.raises(ValueError, match="combine"):
        stfpm.Stfpm(model.teacher, model.student, combine="max")  # type: ignore[arg-type]


# ---- blur and checkpoints ------------------------------------------------------------------


def test_blur_smooths_the_raw_distances_and_zero_turns_it_off():
    sharp = tiny_model()
    sharp_off = stfpm.Stfpm(sharp.teacher, sharp.student, blur_sigma=0)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        raw = sharp_off(x)
        blurred = sharp(x)
        torch.testing.assert_close(
            raw, sharp_off.distances(sharp.teacher(x), sharp.student(x), (SIZE, SIZE))
        )
    torch.testing.assert_close(blurred, sharp.blur(raw))
    assert float(blurred.std()) < float(raw.std())
    torch.testing.assert_close(blurred.mean(), raw.mean(), rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="blur_sigma"):
        stfpm.Stfpm(sharp.teacher, sharp.student, blur_sigma=-1)


def _checkpoint_metadata(model: stfpm.Stfpm):
    from anomaly_edge.metadata import ModelMetadata

    return ModelMetadata(
        model="stfpm",
        backbone=model.backbone,
        input_size=(SIZE, SIZE),
        mean=model.mean,
        std=model.std,
        image_threshold=1.0,
        pixel_threshold=1.0,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
    )


def test_checkpoint_round_trip_rebuilds_the_same_module(tmp_path):
    checkpoint = pytest.importorskip("anomaly_edge.train.checkpoint")
    model = stfpm.fit_stfpm(
        "efficientnet_lite0",
        batches(textured_images(4)),
        batches(textured_images(2, seed=1)),
        max_epochs=1,
        progress=False,
        blur_sigma=2.0,
        map_layers=3,
        fine_layer_weight=0.5,
    )
    path = checkpoint.save_checkpoint(model, _checkpoint_metadata(model), tmp_path / "c.pt")
    rebuilt, _ = checkpoint.load_checkpoint(path)
    assert isinstance(rebuilt, stfpm.Stfpm) and rebuilt.blur_sigma == 2.0
    assert rebuilt.map_layers == 3 and rebuilt.fine_layer_weight == 0.5
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_checkpoint_from_before_the_fine_layer_weight_keeps_its_unweighted_map(tmp_path):
    checkpoint = pytest.importorskip("anomaly_edge.train.checkpoint")
    model = stfpm.build_stfpm("efficientnet_lite0", blur_sigma=0)
    old_kwargs = {k: v for k, v in model.init_kwargs.items() if k != "fine_layer_weight"}
    path = checkpoint.save_checkpoint(
        model, _checkpoint_metadata(model), tmp_path / "old.pt", init_kwargs=old_kwargs
    )
    rebuilt, _ = checkpoint.load_checkpoint(path)
    assert rebuilt.fine_layer_weight == 1.0
    model.fine_layer_weight = 1.0  # what the old code computed
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
