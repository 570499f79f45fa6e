// The AVX-512 kernels (F + BW + VL, as on every AVX-512 Xeon and Core since Skylake-SP):
// sixteen floats per instruction, and masked loads and stores for the ends of rows and runs,
// so there are no scalar tails. Each function carries its own target attribute (no special
// compiler flags); nothing here runs unless cpu_dispatch found these extensions. Same
// operations, same order as kernels_baseline.cpp (no FMA), hence the same bits.
#include "kernels.hpp"

#if AE_X86_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <cmath>

// GCC 12 warns that its own AVX-512 intrinsics read an uninitialised variable (the
// deliberately undefined pass-through of _mm512_undefined_ps; GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define AE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace anomaly_edge::kernels {
namespace {

// Lanes 0 .. count-1 of a 16-lane mask (count <= 16).
inline __mmask16 first_lanes(int count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

AE_AVX512 MapStats scan(const float* v, std::size_t n) {
  std::size_t i = 0;
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  __m512 m0 = _mm512_set1_ps(v[0]), m1 = m0;
  unsigned bad = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(v + i), b = _mm512_loadu_ps(v + i + 16);
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
    // The exponent test flags NaN and inf with integer compares, which NaN cannot slip past.
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(a), exponent), exponent);
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(b), exponent), exponent);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = first_lanes(static_cast<int>(std::min<std::size_t>(n - i, 16)));
    const __m512 a = _mm512_mask_loadu_ps(m0, k, v + i);  // lanes past the end keep m0
    m0 = _mm512_max_ps(m0, a);
    bad |= _mm512_mask_cmpeq_epi32_mask(
        k, _mm512_and_si512(_mm512_castps_si512(a), exponent), exponent);
  }
  const float max_value = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  return MapStats{max_value, bad == 0 && std::isfinite(max_value)};
}

AE_AVX512 std::uint8_t threshold_row(const float* values, int n, float threshold,
                                     std::uint8_t* out) {
  const __m512 t = _mm512_set1_ps(threshold);
  const __m128i one = _mm_set1_epi8(1);
  unsigned any = 0, all = 0xFFFF;
  for (int i = 0; i < n; i += 16) {
    const __mmask16 valid = first_lanes(std::min(n - i, 16));
    const __mmask16 above = _mm512_mask_cmp_ps_mask(
        valid, _mm512_maskz_loadu_ps(valid, values + i), t, _CMP_GE_OQ);
    _mm_mask_storeu_epi8(out + i, valid, _mm_maskz_mov_epi8(above, one));
    any |= above;
    all &= static_cast<unsigned>(above) | (~static_cast<unsigned>(valid) & 0xFFFFu);
  }
  return !any ? kNone : all == 0xFFFF ? kAll : kSome;
}

AE_AVX512 void normalise_row(const float* values, int n, double threshold, double scale,
                             float* out) {
  const __m512d t = _mm512_set1_pd(threshold), s = _mm512_set1_pd(scale);
  const __m512d half = _mm512_set1_pd(0.5), zero = _mm512_setzero_pd();
  const __m512d one = _mm512_set1_pd(1.0), full = _mm512_set1_pd(255.0);
  for (int i = 0; i < n; i += 8) {
    const auto valid = static_cast<__mmask8>(first_lanes(std::min(n - i, 8)));
    const __m512d raw = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(valid, values + i));
    const __m512d v = _mm512_add_pd(_mm512_div_pd(_mm512_sub_pd(raw, t), s), half);
    // max/min equal std::clamp here: v is never NaN (finite map, finite threshold/scale).
    const __m512d clamped = _mm512_min_pd(_mm512_max_pd(v, zero), one);
    _mm256_mask_storeu_ps(out + i, valid, _mm512_cvtpd_ps(_mm512_mul_pd(full, clamped)));
  }
}

AE_AVX512 void interpolate_row(const float* source, const int* lo, const int* hi,
                               const float* w0, const float* w1, float* out, int n) {
  for (int x = 0; x < n; x += 16) {
    const int count = std::min(n - x, 16);
    const __mmask16 valid = first_lanes(count);
    const __m512i lo_v = _mm512_maskz_loadu_epi32(valid, lo + x);
    const __m512i hi_v = _mm512_maskz_loadu_epi32(valid, hi + x);
    __m512 a, b;
    const int base = lo[x];
    if (hi[x + count - 1] - base < 16) {
      // Upsampling: the outputs read at most sixteen neighbouring samples; one load and two
      // in-register permutes replace the gathers. Lanes past the end read index 0 - base,
      // which the permute wraps into the window: harmless, they are not stored.
      const __m512 window = _mm512_loadu_ps(source + base);
      const __m512i offset = _mm512_set1_epi32(base);
      a = _mm512_permutexvar_ps(_mm512_sub_epi32(lo_v, offset), window);
      b = _mm512_permutexvar_ps(_mm512_sub_epi32(hi_v, offset), window);
    } else {
      a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, lo_v, source, 4);
      b = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, hi_v, source, 4);
    }
    const __m512 v = _mm512_add_ps(_mm512_mul_ps(a, _mm512_maskz_loadu_ps(valid, w0 + x)),
                                   _mm512_mul_ps(b, _mm512_maskz_loadu_ps(valid, w1 + x)));
    _mm512_mask_storeu_ps(out + x, valid, v);
  }
}

AE_AVX512 void blend_rows(const float* upper, const float* lower, float wy0, float wy1,
                          std::uint8_t* dst, int n) {
  const __m512 w0 = _mm512_set1_ps(wy0), w1 = _mm512_set1_ps(wy1);
  const __m512 half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps();
  for (int x = 0; x < n; x += 16) {
    const __mmask16 valid = first_lanes(std::min(n - x, 16));
    const __m512 v =
        _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(valid, upper + x), w0),
                                    _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, lower + x), w1)),
                      half);
    // Unsigned saturation to a byte clamps at 255; the max has already clamped at 0.
    const __m128i bytes = _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(_mm512_max_ps(v, zero)));
    _mm_mask_storeu_epi8(dst + x, valid, bytes);
  }
}

AE_AVX512 void render_straddles(const Straddle* runs, std::size_t count, float wy0, float wy1,
                                const float* wx0, const float* wx1, float threshold,
                                std::uint8_t* dst) {
  const __m512 t = _mm512_set1_ps(threshold);
  const __m128i set = _mm_set1_epi8(-1);
  for (std::size_t k = 0; k < count; ++k) {
    const Straddle& s = runs[k];
    const float left = s.top_lo * wy0 + s.bottom_lo * wy1;
    const float right = s.top_hi * wy0 + s.bottom_hi * wy1;
    if ((left >= threshold) == (right >= threshold)) {
      fill(dst + s.begin, s.end - s.begin, left >= threshold ? 255 : 0);
      continue;
    }
    const __m512 l = _mm512_set1_ps(left), r = _mm512_set1_ps(right);
    for (int x = s.begin; x < s.end; x += 16) {
      const __mmask16 valid = first_lanes(std::min(s.end - x, 16));
      const __m512 v = _mm512_add_ps(_mm512_mul_ps(l, _mm512_maskz_loadu_ps(valid, wx0 + x)),
                                     _mm512_mul_ps(r, _mm512_maskz_loadu_ps(valid, wx1 + x)));
      const __mmask16 above = _mm512_mask_cmp_ps_mask(valid, v, t, _CMP_GE_OQ);
      _mm_mask_storeu_epi8(dst + x, valid, _mm_maskz_mov_epi8(above, set));
    }
  }
}

}  // namespace

const Table& avx512_table() {
  static const Table table{scan,          threshold_row, normalise_row,
                           interpolate_row, blend_rows,  render_straddles};
  return table;
}

}  // namespace anomaly_edge::kernels

#endif  // AE_X86_KERNELS
