"""CPU instruction-set levels, to reproduce on one machine what other CPUs compute.

Float results of training and inference depend on the CPU's instruction set: oneDNN (inside
torch and inside OpenVINO) and ATen pick different kernels for SSE4.1, AVX2 and AVX-512, and
those sum in different orders. To see what another CPU would compute, cap every library that
dispatches on the CPU, in the environment of a fresh process (they read it once, at start):

* ``ONEDNN_MAX_CPU_ISA``: oneDNN's kernels (torch's convolutions and OpenVINO's);
* ``OV_CPU_MAX_ISA``: OpenVINO's own CPU kernels. Without it OpenVINO disagrees with its own
  oneDNN (seen with OpenVINO 2026.4 on an AVX-512-BF16 CPU: under an AVX2 cap it still
  chooses bf16 and fails to compile pooling; under SSE4.1 its bilinear Interpolate fails);
* ``ATEN_CPU_CAPABILITY``: torch's vectorised element-wise and reduction kernels.

No torch here: tests and tools import this to set up child processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IsaLevel:
    """One instruction-set level: its name, the CPU flags it needs, the variables that cap it."""

    name: str
    cpu_flags: frozenset[str]
    env: Mapping[str, str]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with this level's caps set."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        return env


def _level(name: str, flags: str, onednn: str, aten: str) -> IsaLevel:
    return IsaLevel(
        name,
        frozenset(flags.split()),
        {"ONEDNN_MAX_CPU_ISA": onednn, "OV_CPU_MAX_ISA": onednn, "ATEN_CPU_CAPABILITY": aten},
    )


# The levels torch's CPU kernels are built for; "avx512" is AVX-512 without bf16/AMX
# (Skylake-X to Ice Lake). "native" caps nothing: whatever this CPU offers (on CPUs with
# AVX512_BF16 or AMX, OpenVINO then runs float models in bf16 unless told f32).
LEVELS: dict[str, IsaLevel] = {
    "sse41": _level("sse41", "sse4_1", "SSE41", "default"),
    "avx2": _level("avx2", "avx2 fma", "AVX2", "avx2"),
    "avx512": _level("avx512", "avx512f avx512bw avx512vl avx512dq", "AVX512_CORE", "avx512"),
    "native": IsaLevel("native", frozenset(), {}),
}
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "ATEN_CPU_CAPABILITY")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags this CPU reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def supported_levels(flags: frozenset[str] | None = None) -> list[IsaLevel]:
    """The levels this CPU can run, lowest first; "native" always."""
    flags = cpu_flags() if flags is None else flags
    return [level for level in LEVELS.values() if level.cpu_flags <= flags]


def level(name: str) -> IsaLevel:
    """The level called ``name`` (one of :data:`LEVELS`), with a clear error otherwise."""
    try:
        return LEVELS[name]
    except KeyError:
        raise ValueError(
            f"unknown instruction-set level {name!r}; choose one of {', '.join(LEVELS)}"
        ) from None


def active_caps() -> dict[str, str]:
    """The caps set in this process's environment (empty: nothing capped)."""
    return {name: os.environ[name] for name in CAP_VARIABLES if name in os.environ}
