// The AVX2 kernels: eight floats per instruction where the baseline handles four. Each
// function carries its own target attribute, so this file needs no special compiler flags and
// nothing in it runs unless cpu_dispatch found AVX2. Same operations, same order as
// kernels_baseline.cpp (no FMA), hence the same bits.
#include "kernels.hpp"

#if AE_X86_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define AE_AVX2 __attribute__((target("avx2")))

namespace anomaly_edge::kernels {
namespace {

// Packs work within 128-bit halves; this permute puts the 32 bytes back in lane order.
AE_AVX2 inline __m256i in_lane_order(__m256i packed) {
  return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The 32-bit lanes of a, b, c, d as 32 bytes, clamped to 0..255.
AE_AVX2 inline __m256i pack_values(__m256i a, __m256i b, __m256i c, __m256i d) {
  return in_lane_order(
      _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d)));
}

// The 0 / -1 lanes of four compare masks as 32 bytes 0x00 / 0xFF.
AE_AVX2 inline __m256i pack_masks(__m256i a, __m256i b, __m256i c, __m256i d) {
  return in_lane_order(_mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d)));
}

AE_AVX2 MapStats scan(const float* v, std::size_t n) {
  std::size_t i = 0;
  float max_value = v[0];
  bool bad = false;
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  __m256 m0 = _mm256_set1_ps(v[0]), m1 = m0;
  __m256i bad_v = _mm256_setzero_si256();
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + 8);
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
    const __m256i ea = _mm256_and_si256(_mm256_castps_si256(a), exponent);
    const __m256i eb = _mm256_and_si256(_mm256_castps_si256(b), exponent);
    bad_v = _mm256_or_si256(bad_v, _mm256_or_si256(_mm256_cmpeq_epi32(ea, exponent),
                                                   _mm256_cmpeq_epi32(eb, exponent)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  for (float lane : lanes) max_value = std::max(max_value, lane);
  bad = !_mm256_testz_si256(bad_v, bad_v);
  for (; i < n; ++i) {
    max_value = std::max(max_value, v[i]);
    bad = bad || !std::isfinite(v[i]);
  }
  return MapStats{max_value, !bad && std::isfinite(max_value)};
}

AE_AVX2 std::uint8_t threshold_row(const float* values, int n, float threshold,
                                   std::uint8_t* out) {
  int i = 0;
  unsigned any = 0, all = 1;
  const __m256 t = _mm256_set1_ps(threshold);
  const __m256i one = _mm256_set1_epi8(1);
  __m256i any_v = _mm256_setzero_si256(), all_v = one;
  for (; i + 32 <= n; i += 32) {
    __m256i above[4];
    for (int k = 0; k < 4; ++k)
      above[k] = _mm256_castps_si256(
          _mm256_cmp_ps(_mm256_loadu_ps(values + i + 8 * k), t, _CMP_GE_OQ));
    const __m256i bytes =
        _mm256_and_si256(pack_masks(above[0], above[1], above[2], above[3]), one);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bytes);
    any_v = _mm256_or_si256(any_v, bytes);
    all_v = _mm256_and_si256(all_v, bytes);
  }
  if (i > 0) {
    any = !_mm256_testz_si256(any_v, any_v);
    all = static_cast<unsigned>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(all_v, one))) ==
          0xFFFFFFFFu;
  }
  for (; i < n; ++i) {
    const unsigned bit = values[i] >= threshold;
    out[i] = static_cast<std::uint8_t>(bit);
    any |= bit;
    all &= bit;
  }
  return !any ? kNone : all ? kAll : kSome;
}

AE_AVX2 void normalise_row(const float* values, int n, double threshold, double scale,
                           float* out) {
  int i = 0;
  const __m256d t = _mm256_set1_pd(threshold), s = _mm256_set1_pd(scale);
  const __m256d half = _mm256_set1_pd(0.5), zero = _mm256_setzero_pd();
  const __m256d one = _mm256_set1_pd(1.0), full = _mm256_set1_pd(255.0);
  for (; i + 4 <= n; i += 4) {
    const __m256d raw = _mm256_cvtps_pd(_mm_loadu_ps(values + i));
    const __m256d v = _mm256_add_pd(_mm256_div_pd(_mm256_sub_pd(raw, t), s), half);
    // max/min equal std::clamp here: v is never NaN (finite map, finite threshold/scale).
    const __m256d clamped = _mm256_min_pd(_mm256_max_pd(v, zero), one);
    _mm_storeu_ps(out + i, _mm256_cvtpd_ps(_mm256_mul_pd(full, clamped)));
  }
  for (; i < n; ++i)
    out[i] = static_cast<float>(
        255.0 * std::clamp((values[i] - threshold) / scale + 0.5, 0.0, 1.0));
}

AE_AVX2 void interpolate_row(const float* source, const int* lo, const int* hi,
                             const float* w0, const float* w1, float* out, int n) {
  int x = 0;
  for (; x + 8 <= n; x += 8) {
    const __m256i lo_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + x));
    const __m256i hi_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi + x));
    __m256 a, b;
    const int base = lo[x];
    if (hi[x + 7] - base < 8) {
      // Upsampling: the eight outputs read at most eight neighbouring samples; one load and
      // two in-register permutes replace sixteen scalar loads.
      const __m256 window = _mm256_loadu_ps(source + base);
      const __m256i offset = _mm256_set1_epi32(base);
      a = _mm256_permutevar8x32_ps(window, _mm256_sub_epi32(lo_v, offset));
      b = _mm256_permutevar8x32_ps(window, _mm256_sub_epi32(hi_v, offset));
    } else {
      a = _mm256_i32gather_ps(source, lo_v, 4);
      b = _mm256_i32gather_ps(source, hi_v, 4);
    }
    _mm256_storeu_ps(out + x, _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(w0 + x)),
                                            _mm256_mul_ps(b, _mm256_loadu_ps(w1 + x))));
  }
  for (; x < n; ++x) out[x] = source[lo[x]] * w0[x] + source[hi[x]] * w1[x];
}

AE_AVX2 inline __m256i blend_to_ints(const float* upper, const float* lower, __m256 w0,
                                     __m256 w1) {
  const __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(upper), w0),
                                               _mm256_mul_ps(_mm256_loadu_ps(lower), w1)),
                                 _mm256_set1_ps(0.5f));
  return _mm256_cvttps_epi32(_mm256_max_ps(v, _mm256_setzero_ps()));
}

AE_AVX2 void blend_rows(const float* upper, const float* lower, float wy0, float wy1,
                        std::uint8_t* dst, int n) {
  int x = 0;
  const __m256 w0 = _mm256_set1_ps(wy0), w1 = _mm256_set1_ps(wy1);
  for (; x + 32 <= n; x += 32) {
    // Saturating packs clamp to 0..255.
    const __m256i bytes = pack_values(
        blend_to_ints(upper + x, lower + x, w0, w1),
        blend_to_ints(upper + x + 8, lower + x + 8, w0, w1),
        blend_to_ints(upper + x + 16, lower + x + 16, w0, w1),
        blend_to_ints(upper + x + 24, lower + x + 24, w0, w1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + x), bytes);
  }
  for (; x + 8 <= n; x += 8) {
    const __m256i ints = blend_to_ints(upper + x, lower + x, w0, w1);
    const __m128i words =
        _mm_packs_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + x), _mm_packus_epi16(words, words));
  }
  for (; x < n; ++x) {
    const float v = upper[x] * wy0 + lower[x] * wy1 + 0.5f;
    dst[x] = static_cast<std::uint8_t>(std::clamp(v, 0.0f, 255.0f));
  }
}

// 0xFF / 0x00 bytes for left * wx0[x] + right * wx1[x] >= threshold, x = at .. at + 7, as
// the low eight bytes of a 64-bit word.
AE_AVX2 inline std::uint64_t straddle_bytes(__m256 left, __m256 right, __m256 threshold,
                                            const float* wx0, const float* wx1) {
  const __m256 v = _mm256_add_ps(_mm256_mul_ps(left, _mm256_loadu_ps(wx0)),
                                 _mm256_mul_ps(right, _mm256_loadu_ps(wx1)));
  const __m256i above = _mm256_castps_si256(_mm256_cmp_ps(v, threshold, _CMP_GE_OQ));
  const __m128i words =
      _mm_packs_epi32(_mm256_castsi256_si128(above), _mm256_extracti128_si256(above, 1));
  return static_cast<std::uint64_t>(_mm_cvtsi128_si64(_mm_packs_epi16(words, words)));
}

AE_AVX2 void render_straddles(const Straddle* runs, std::size_t count, float wy0, float wy1,
                              const float* wx0, const float* wx1, float threshold,
                              std::uint8_t* dst) {
  const __m256 t = _mm256_set1_ps(threshold);
  for (std::size_t k = 0; k < count; ++k) {
    const Straddle& s = runs[k];
    const float left = s.top_lo * wy0 + s.bottom_lo * wy1;
    const float right = s.top_hi * wy0 + s.bottom_hi * wy1;
    const int n = s.end - s.begin;
    if ((left >= threshold) == (right >= threshold)) {
      fill(dst + s.begin, n, left >= threshold ? 255 : 0);
      continue;
    }
    const __m256 l = _mm256_set1_ps(left), r = _mm256_set1_ps(right);
    if (n < 8) {  // the weight arrays are padded, the row is not: store only n bytes
      store_few(dst + s.begin, n, straddle_bytes(l, r, t, wx0 + s.begin, wx1 + s.begin));
      continue;
    }
    // Whole groups of eight, the last one overlapping its predecessor (same values).
    for (int x = s.begin;; x += 8) {
      x = std::min(x, s.end - 8);
      const std::uint64_t bytes = straddle_bytes(l, r, t, wx0 + x, wx1 + x);
      std::memcpy(dst + x, &bytes, 8);
      if (x == s.end - 8) break;
    }
  }
}

}  // namespace

const Table& avx2_table() {
  static const Table table{scan,          threshold_row, normalise_row,
                           interpolate_row, blend_rows,  render_straddles};
  return table;
}

}  // namespace anomaly_edge::kernels

#endif  // AE_X86_KERNELS
