#!/usr/bin/env bash
# Build anomaly_edge._post and the C++ library test with AddressSanitizer +
# UndefinedBehaviorSanitizer (-DAE_SANITIZE=ON) in their own build directory, run the C++ test
# with ctest and the post-processor's Python tests against that build.
#
#   tools/sanitize.sh                    # tests/test_postprocess*.py, test_box_downsample.py, test_stitch.py
#   tools/sanitize.sh -k threads         # extra arguments go to pytest
#
# The sanitized module is staged in a temporary copy of the package that comes first on
# PYTHONPATH, so the regular build in python/anomaly_edge/ is left alone. Any ASan or UBSan
# finding aborts the run with a non-zero exit status.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
if [[ -x "$repo/.venv/bin/python" && -z "${PYTHON:-}" ]]; then python="$repo/.venv/bin/python"; fi
build_dir="${BUILD_DIR:-$repo/build/sanitize}"
jobs="${JOBS:-2}"

libasan="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$libasan" ]]; then
  echo "error: gcc's libasan.so not found (install the gcc sanitizer runtime, e.g. libasan8)" >&2
  exit 1
fi

cmake -S "$repo" -B "$build_dir" \
  -DAE_SANITIZE=ON -DAE_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" >/dev/null
cmake --build "$build_dir" --parallel "$jobs"
ASAN_OPTIONS="abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir "$build_dir" --output-on-failure

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r "$repo/python/anomaly_edge" "$stage/"
rm -f "$stage"/anomaly_edge/_post*.so
cp "$build_dir"/_post*.so "$stage/anomaly_edge/"

export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"
# libstdc++ is preloaded too: ASan intercepts C++ throws and must find the real __cxa_throw at
# start-up, before Python loads the extension (and with it libstdc++).
libstdcxx="$(gcc -print-file-name=libstdc++.so.6)"
export LD_PRELOAD="$libasan $libstdcxx"
# Python itself "leaks" by design at exit; leak reports would be noise.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

cd "$repo"
"$python" -c "import anomaly_edge._post as m, sys; assert m.__file__.startswith('$stage'), m.__file__; print('sanitized module:', m.__file__)"
"$python" -m pytest -q -p no:cacheprovider tests/test_postprocess*.py tests/test_box_downsample.py tests/test_stitch.py "$@"
echo "sanitizer run clean"
