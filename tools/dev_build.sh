#!/usr/bin/env bash
# Build the C++ extension anomaly_edge._post with plain CMake and drop it into
# python/anomaly_edge/, so a source checkout (python/ on sys.path) imports it directly.
#
#   tools/dev_build.sh            # Release build in build/dev
#   BUILD_DIR=build/x CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Debug" tools/dev_build.sh
#
# `pip install -e . --no-build-isolation` (scikit-build-core) is the alternative; this script
# is quicker to iterate with and leaves no install metadata behind.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
if [[ -x "$repo/.venv/bin/python" && -z "${PYTHON:-}" ]]; then python="$repo/.venv/bin/python"; fi
build_dir="${BUILD_DIR:-$repo/build/dev}"
jobs="${JOBS:-2}"

pybind11_dir="$("$python" -m pybind11 --cmakedir)" || {
  echo "error: pybind11 is not installed for $python; run: $python -m pip install pybind11" >&2
  exit 1
}

# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words on purpose
cmake -S "$repo" -B "$build_dir" \
  -Dpybind11_DIR="$pybind11_dir" \
  -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" \
  ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" --parallel "$jobs"

shopt -s nullglob
built=("$build_dir"/_post*.so)
if [[ ${#built[@]} -ne 1 ]]; then
  echo "error: expected one _post*.so in $build_dir, found ${#built[@]}" >&2
  exit 1
fi
rm -f "$repo"/python/anomaly_edge/_post*.so
# Copy to a temporary name first so that a running interpreter never sees a half-written file.
tmp="$repo/python/anomaly_edge/.$(basename "${built[0]}").tmp"
cp "${built[0]}" "$tmp"
mv -f "$tmp" "$repo/python/anomaly_edge/$(basename "${built[0]}")"
echo "built $(basename "${built[0]}") -> python/anomaly_edge/"
