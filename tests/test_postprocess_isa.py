"""The post-processor's instruction sets: every one this CPU runs gives the baseline's exact bits.

The AVX2 and AVX-512 kernels are picked at run time (cpp/cpu_dispatch.hpp); here each supported
ISA runs the same random cases as the portable baseline, through ``_post.set_isa``, and scores,
boxes, masks and heatmaps must be identical. ISAs this CPU lacks are skipped (and must be
refused with a clear error). ANOMALY_EDGE_ISA is checked in subprocesses, since it is read once
per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_edge import _post
from anomaly_edge.postprocess import PostprocessParams, postprocess, postprocess_batch
from tests.test_postprocess_reference import blobby_map

SUPPORTED = _post.supported_isas()
FASTER = [isa for isa in SUPPORTED if isa != "baseline"]
UNSUPPORTED = [isa for isa in _post.ISAS if isa not in SUPPORTED]


@pytest.fixture
def restore_isa():
    yield
    _post.set_isa(None)


def random_cases(seed: int = 0) -> list[tuple[np.ndarray, tuple[int, int], PostprocessParams]]:
    """Maps of many shapes and kinds, frames smaller, equal and larger, odd sizes included."""
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 7), (7, 1), (3, 17), (17, 3), (33, 65), (64, 64), (100, 37), (256, 256)]
    frames = [(1, 1), (2, 3), (5, 200), (31, 33), (64, 64), (97, 131), (480, 640), (721, 1283)]
    cases = []
    for i in range(48):
        shape = shapes[i % len(shapes)]
        kind = i % 4
        if kind == 0:
            anomaly_map = blobby_map(rng, shape, blobs=int(rng.integers(0, 12)))
        elif kind == 1:  # plateaus exactly on the threshold
            anomaly_map = rng.choice(np.float32([0.0, 0.25, 0.5, 0.75, 1.0]), size=shape)
        elif kind == 2:
            anomaly_map = rng.normal(0.5, 0.5, shape).astype(np.float32)
        else:  # values a hair either side of the threshold: ties in the bilinear blends
            anomaly_map = (0.5 + rng.integers(-2, 3, shape) * 1e-7).astype(np.float32)
        frame = frames[int(rng.integers(0, len(frames)))]
        params = PostprocessParams(
            image_threshold=0.5, pixel_threshold=0.5, image_scale=float(rng.uniform(0.05, 3.0)),
            pixel_scale=float(rng.uniform(0.05, 3.0)), min_area=int(rng.integers(0, 3)),
        )  # fmt: skip
        cases.append((anomaly_map, frame, params))
    big = blobby_map(rng, (256, 256), blobs=40)
    cases.append((big, (1080, 1920), PostprocessParams(0.5, 0.5, 1.0, 1.0)))
    signed_zeros = np.where(rng.random((16, 16)) < 0.5, np.float32(-0.0), np.float32(0.0))
    cases.append((signed_zeros.astype(np.float32), (40, 40), PostprocessParams(0.5, 0.5, 1.0, 1.0)))
    return cases


CASES = random_cases()


def outputs_under(isa: str) -> list[tuple]:
    _post.set_isa(isa)
    assert _post.active_isa() == isa
    results = []
    for anomaly_map, frame, params in CASES:
        p = postprocess(anomaly_map, frame, params, "segmentation", heatmap=True)
        results.append((p.score, p.label, p.raw_score, p.boxes, p.mask, p.heatmap))
    return results


def assert_identical(got: list[tuple], want: list[tuple], isa: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"{isa}, case {i}: map {CASES[i][0].shape} -> frame {CASES[i][1]}"
        assert g[:4] == w[:4], f"{where}: score/label/raw score/boxes differ"
        assert np.copysign(1.0, g[2]) == np.copysign(1.0, w[2]), f"{where}: sign of raw score"
        np.testing.assert_array_equal(g[4], w[4], err_msg=f"{where}: mask")
        np.testing.assert_array_equal(g[5], w[5], err_msg=f"{where}: heatmap")


@pytest.mark.parametrize("isa", FASTER)
def test_every_isa_gives_the_baseline_bits(isa, restore_isa):
    want = outputs_under("baseline")
    assert_identical(outputs_under(isa), want, isa)


@pytest.mark.parametrize("isa", FASTER)
def test_batches_follow_the_switch_too(isa, restore_isa):
    rng = np.random.default_rng(5)
    maps = np.stack([blobby_map(rng, (48, 80), blobs=b) for b in (0, 3, 20)])
    sizes = [(480, 640), (33, 1001), (7, 5)]
    params = PostprocessParams(0.5, 0.4, 1.0, 0.7)
    _post.set_isa("baseline")
    want = postprocess_batch(maps, sizes, params, "segmentation", heatmap=True)
    _post.set_isa(isa)
    got = postprocess_batch(maps, sizes, params, "segmentation", heatmap=True)
    for g, w in zip(got, want, strict=True):
        assert (g.score, g.boxes) == (w.score, w.boxes)
        np.testing.assert_array_equal(g.mask, w.mask)
        np.testing.assert_array_equal(g.heatmap, w.heatmap)


# ---- what the CPU offers and how to choose -----------------------------------------------------


def test_supported_isas_follow_the_cpu_features():
    features = _post.cpu_features()
    assert set(features) == {"sse2", "avx2", "avx512f", "avx512bw", "avx512vl"}
    assert all(isinstance(v, bool) for v in features.values())
    assert SUPPORTED[0] == "baseline"
    assert sorted(SUPPORTED, key=_post.ISAS.index) == SUPPORTED  # slowest first
    if "avx2" in SUPPORTED:
        assert features["avx2"]
    if "avx512" in SUPPORTED:
        assert features["avx512f"] and features["avx512bw"] and features["avx512vl"]
    if sys.platform == "linux" and os.uname().machine == "x86_64":  # this build has the kernels
        assert ("avx2" in SUPPORTED) == features["avx2"]
        assert ("avx512" in SUPPORTED) == all(
            features[f] for f in ("avx512f", "avx512bw", "avx512vl")
        )


def test_the_default_is_the_fastest_unless_the_environment_says_otherwise(restore_isa):
    _post.set_isa(None)
    assert _post.active_isa() == (os.environ.get("ANOMALY_EDGE_ISA") or SUPPORTED[-1])


def test_set_isa_refuses_unknown_and_unsupported_names(restore_isa):
    before = _post.active_isa()
    with pytest.raises(ValueError, match=r"unknown instruction set 'sse9'.*baseline, avx2, avx512"):
        _post.set_isa("sse9")
    for isa in UNSUPPORTED:
        with pytest.raises(ValueError, match=f"cannot run {isa}; choose one it supports: baseline"):
            _post.set_isa(isa)
    assert _post.active_isa() == before  # a refused switch changes nothing


def run_with_environment(value: str) -> subprocess.CompletedProcess:
    package_root = str(Path(_post.__file__).resolve().parents[1])
    env = dict(os.environ, ANOMALY_EDGE_ISA=value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import anomaly_edge._post as m; print(m.active_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_the_environment_variable_picks_the_isa():
    result = run_with_environment("baseline")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "baseline"


@pytest.mark.parametrize("value", ["sse9", *UNSUPPORTED])
def test_a_bad_environment_variable_fails_the_import_clearly(value):
    result = run_with_environment(value)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: ANOMALY_EDGE_ISA=" + value), result.stderr
    assert "unset ANOMALY_EDGE_ISA" in last_line
