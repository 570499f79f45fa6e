// The post-processor's hot loops, one table of function pointers per instruction set.
//
// postprocess.cpp owns the algorithms (geometry, components, spans) and calls these kernels
// for the per-element work. kernels_baseline.cpp is the portable x86-64 (SSE2) or scalar
// version; kernels_avx2.cpp and kernels_avx512.cpp are compiled with function-level target
// attributes and only ever called when cpu_dispatch says the CPU has those instructions.
//
// Every version does the same float operations in the same order (no FMA: the library is
// built with -ffp-contract=off), so all of them give bit-identical results.
// tests/test_postprocess_isa.py holds them to that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu_dispatch.hpp"
#include "postprocess.hpp"

namespace anomaly_edge::kernels {

// Readable (zero) elements that interpolate_row's `source` and render_straddles' weight
// arrays must have past their last real element: vector loads may run that far.
constexpr int kPadding = 16;

// A thresholded row's summary: no pixel, every pixel or some pixels at or above threshold.
enum RowKind : std::uint8_t { kNone = 0, kAll = 1, kSome = 2 };

// A run of mask pixels [begin, end) that blend the same four source samples, which lie on
// both sides of the threshold.
struct Straddle {
  int begin, end;
  float top_lo, bottom_lo, top_hi, bottom_hi;
};

struct Table {
  // Largest of values[0..n) (n >= 1) and whether all of them are finite.
  MapStats (*scan)(const float* values, std::size_t n);

  // out[i] = values[i] >= threshold (0/1); returns the row's RowKind.
  std::uint8_t (*threshold_row)(const float* values, int n, float threshold, std::uint8_t* out);

  // out[i] = float(255 * clamp((values[i] - threshold) / scale + 0.5, 0, 1)), in double.
  void (*normalise_row)(const float* values, int n, double threshold, double scale, float* out);

  // out[x] = source[lo[x]] * w0[x] + source[hi[x]] * w1[x]: the horizontal bilinear pass.
  // lo and hi are non-decreasing, lo[x] <= hi[x]; source has kPadding readable floats past
  // its largest index.
  void (*interpolate_row)(const float* source, const int* lo, const int* hi, const float* w0,
                          const float* w1, float* out, int n);

  // dst[x] = clamp(upper[x] * wy0 + lower[x] * wy1 + 0.5, 0, 255), truncated to a byte.
  void (*blend_rows)(const float* upper, const float* lower, float wy0, float wy1,
                     std::uint8_t* dst, int n);

  // The mask pixels of one output row in straddling runs: blend each run's samples with the
  // row weights, then dst[x] = 255 where left * wx0[x] + right * wx1[x] >= threshold, else 0
  // (a run whose two ends fall on one side is filled with that side). wx0 and wx1 have
  // kPadding readable floats past the row's width.
  void (*render_straddles)(const Straddle* runs, std::size_t count, float wy0, float wy1,
                           const float* wx0, const float* wx1, float threshold,
                           std::uint8_t* dst);
};

// The table for an ISA; falls back to the baseline for one not compiled in. Callers check
// isa_supported first: an AVX table on a CPU without AVX dies of an illegal instruction.
const Table& table_for(Isa isa);

const Table& baseline_table();
#if AE_X86_KERNELS
const Table& avx2_table();
const Table& avx512_table();
#endif

// memset for the many short spans of a mask row: a call to memset costs more than the
// handful of bytes it writes, so spans under 16 bytes take two overlapping stores.
inline void fill(std::uint8_t* dst, int n, std::uint8_t value) {
  if (n >= 16) {
    std::memset(dst, value, static_cast<std::size_t>(n));
  } else if (n >= 8) {
    const std::uint64_t word = 0x0101010101010101ull * value;
    std::memcpy(dst, &word, 8);
    std::memcpy(dst + n - 8, &word, 8);
  } else if (n >= 4) {
    const std::uint32_t word = 0x01010101u * value;
    std::memcpy(dst, &word, 4);
    std::memcpy(dst + n - 4, &word, 4);
  } else {
    for (int i = 0; i < n; ++i) dst[i] = value;
  }
}

// Writes the first n (< 8) bytes of `bytes` (little-endian) to dst.
inline void store_few(std::uint8_t* dst, int n, std::uint64_t bytes) {
  if (n >= 4) {
    const auto head = static_cast<std::uint32_t>(bytes);
    const auto tail = static_cast<std::uint32_t>(bytes >> (8 * (n - 4)));
    std::memcpy(dst, &head, 4);
    std::memcpy(dst + n - 4, &tail, 4);
  } else {
    for (int i = 0; i < n; ++i) dst[i] = static_cast<std::uint8_t>(bytes >> (8 * i));
  }
}

}  // namespace anomaly_edge::kernels
