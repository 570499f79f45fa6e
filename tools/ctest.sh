#!/usr/bin/env bash
# Build the post-processor library with its C++ test (CMake option AE_BUILD_TESTS) and run it
# with ctest: the library used from C++, with no Python involved.
#
#   tools/ctest.sh                                   # Release build in build/ctest
#   BUILD_DIR=build/x CMAKE_ARGS="-DAE_SANITIZE=ON" tools/ctest.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
if [[ -x "$repo/.venv/bin/python" && -z "${PYTHON:-}" ]]; then python="$repo/.venv/bin/python"; fi
build_dir="${BUILD_DIR:-$repo/build/ctest}"

# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words on purpose
cmake -S "$repo" -B "$build_dir" -DAE_BUILD_TESTS=ON \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" \
  ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" --parallel "${JOBS:-2}" --target library_test
ctest --test-dir "$build_dir" --output-on-failure
