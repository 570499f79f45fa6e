// The portable kernels: SSE2, which every x86-64 CPU has, and plain C++ elsewhere. Also the
// reference the AVX versions must match bit for bit (see kernels.hpp).
#include <algorithm>
#include <cmath>

#include "kernels.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace anomaly_edge::kernels {
namespace {

MapStats scan(const float* v, std::size_t n) {
  std::size_t i = 0;
  float max_value = v[0];
  bool bad = false;
#if defined(__SSE2__)
  // The exponent test flags NaN and inf with integer compares, which NaN cannot slip past.
  const __m128i exponent = _mm_set1_epi32(0x7f800000);
  __m128 m0 = _mm_set1_ps(v[0]), m1 = m0;
  __m128i bad_v = _mm_setzero_si128();
  for (; i + 8 <= n; i += 8) {
    const __m128 a = _mm_loadu_ps(v + i), b = _mm_loadu_ps(v + i + 4);
    m0 = _mm_max_ps(m0, a);
    m1 = _mm_max_ps(m1, b);
    const __m128i ea = _mm_and_si128(_mm_castps_si128(a), exponent);
    const __m128i eb = _mm_and_si128(_mm_castps_si128(b), exponent);
    bad_v = _mm_or_si128(bad_v, _mm_or_si128(_mm_cmpeq_epi32(ea, exponent),
                                             _mm_cmpeq_epi32(eb, exponent)));
  }
  float lanes[4];
  _mm_storeu_ps(lanes, _mm_max_ps(m0, m1));
  for (float lane : lanes) max_value = std::max(max_value, lane);
  bad = _mm_movemask_epi8(bad_v) != 0;
#endif
  for (; i < n; ++i) {
    max_value = std::max(max_value, v[i]);
    bad = bad || !std::isfinite(v[i]);
  }
  return MapStats{max_value, !bad && std::isfinite(max_value)};
}

std::uint8_t threshold_row(const float* values, int n, float threshold, std::uint8_t* out) {
  int i = 0;
  unsigned any = 0, all = 1;
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(threshold);
  const __m128i one = _mm_set1_epi8(1);
  __m128i any_v = _mm_setzero_si128(), all_v = one;
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_castps_si128(_mm_cmpge_ps(_mm_loadu_ps(values + i), t));
    const __m128i b = _mm_castps_si128(_mm_cmpge_ps(_mm_loadu_ps(values + i + 4), t));
    const __m128i c = _mm_castps_si128(_mm_cmpge_ps(_mm_loadu_ps(values + i + 8), t));
    const __m128i d = _mm_castps_si128(_mm_cmpge_ps(_mm_loadu_ps(values + i + 12), t));
    const __m128i bytes = _mm_and_si128(
        _mm_packs_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d)), one);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), bytes);
    any_v = _mm_or_si128(any_v, bytes);
    all_v = _mm_and_si128(all_v, bytes);
  }
  if (i > 0) {
    any = _mm_movemask_epi8(_mm_cmpeq_epi8(any_v, _mm_setzero_si128())) != 0xFFFF;
    all = _mm_movemask_epi8(_mm_cmpeq_epi8(all_v, one)) == 0xFFFF;
  }
#endif
  for (; i < n; ++i) {
    const unsigned bit = values[i] >= threshold;
    out[i] = static_cast<std::uint8_t>(bit);
    any |= bit;
    all &= bit;
  }
  return !any ? kNone : all ? kAll : kSome;
}

void normalise_row(const float* values, int n, double threshold, double scale, float* out) {
  for (int i = 0; i < n; ++i)
    out[i] = static_cast<float>(
        255.0 * std::clamp((values[i] - threshold) / scale + 0.5, 0.0, 1.0));
}

void interpolate_row(const float* source, const int* lo, const int* hi, const float* w0,
                     const float* w1, float* out, int n) {
  for (int x = 0; x < n; ++x) out[x] = source[lo[x]] * w0[x] + source[hi[x]] * w1[x];
}

void blend_rows(const float* upper, const float* lower, float wy0, float wy1,
                std::uint8_t* dst, int n) {
  int x = 0;
#if defined(__SSE2__)
  const __m128 w0 = _mm_set1_ps(wy0), w1 = _mm_set1_ps(wy1), half = _mm_set1_ps(0.5f);
  const __m128 zero = _mm_setzero_ps();
  for (; x + 16 <= n; x += 16) {
    __m128i words[4];
    for (int k = 0; k < 4; ++k) {
      const __m128 v = _mm_add_ps(_mm_add_ps(_mm_mul_ps(_mm_loadu_ps(upper + x + 4 * k), w0),
                                             _mm_mul_ps(_mm_loadu_ps(lower + x + 4 * k), w1)),
                                  half);
      words[k] = _mm_cvttps_epi32(_mm_max_ps(v, zero));
    }
    // Saturating packs clamp to 0..255.
    const __m128i lo = _mm_packs_epi32(words[0], words[1]);
    const __m128i hi = _mm_packs_epi32(words[2], words[3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + x), _mm_packus_epi16(lo, hi));
  }
#endif
  for (; x < n; ++x) {
    const float v = upper[x] * wy0 + lower[x] * wy1 + 0.5f;
    dst[x] = static_cast<std::uint8_t>(std::clamp(v, 0.0f, 255.0f));
  }
}

void render_straddles(const Straddle* runs, std::size_t count, float wy0, float wy1,
                      const float* wx0, const float* wx1, float threshold, std::uint8_t* dst) {
  for (std::size_t k = 0; k < count; ++k) {
    const Straddle& s = runs[k];
    // Blend vertically once per run; along the run the value is then linear in the column
    // weight, and often all on one side of the threshold.
    const float left = s.top_lo * wy0 + s.bottom_lo * wy1;
    const float right = s.top_hi * wy0 + s.bottom_hi * wy1;
    if ((left >= threshold) == (right >= threshold)) {
      fill(dst + s.begin, s.end - s.begin, left >= threshold ? 255 : 0);
      continue;
    }
    for (int x = s.begin; x < s.end; ++x) {
      const float v = left * wx0[x] + right * wx1[x];
      dst[x] = v >= threshold ? 255 : 0;
    }
  }
}

}  // namespace

const Table& baseline_table() {
  static const Table table{scan,          threshold_row, normalise_row,
                           interpolate_row, blend_rows,  render_straddles};
  return table;
}

const Table& table_for(Isa isa) {
#if AE_X86_KERNELS
  if (isa == Isa::Avx2) return avx2_table();
  if (isa == Isa::Avx512) return avx512_table();
#else
  (void)isa;
#endif
  return baseline_table();
}

}  // namespace anomaly_edge::kernels
