#include "box_downsample.hpp"

#include <cstdint>
#include <vector>

namespace anomaly_edge {
namespace {

// Sums each block_w-wide group of columns of one row of column sums, per channel. C and BW
// are the channel count and block width when known at compile time (the loops unroll), 0
// otherwise: short loops with a run-time trip count cost more than the adds in them.
template <int C, int BW>
void reduce_columns(const std::uint32_t* sums, int out_w, int block_w, int channels,
                    std::uint32_t* totals) {
  const int c = C > 0 ? C : channels;
  const int bw = BW > 0 ? BW : block_w;
  for (int ox = 0; ox < out_w; ++ox) {
    for (int ch = 0; ch < c; ++ch) {
      std::uint32_t total = 0;
      for (int dx = 0; dx < bw; ++dx) total += sums[dx * c + ch];
      totals[ch] = total;
    }
    sums += static_cast<std::ptrdiff_t>(bw) * c;
    totals += c;
  }
}

template <int C>
void reduce_columns_for(const std::uint32_t* sums, int out_w, int block_w, int channels,
                        std::uint32_t* totals) {
  switch (block_w) {  // the block widths of common frame sizes at common network sizes
    case 1: reduce_columns<C, 1>(sums, out_w, block_w, channels, totals); break;
    case 2: reduce_columns<C, 2>(sums, out_w, block_w, channels, totals); break;
    case 3: reduce_columns<C, 3>(sums, out_w, block_w, channels, totals); break;
    case 4: reduce_columns<C, 4>(sums, out_w, block_w, channels, totals); break;
    case 5: reduce_columns<C, 5>(sums, out_w, block_w, channels, totals); break;
    case 7: reduce_columns<C, 7>(sums, out_w, block_w, channels, totals); break;
    case 8: reduce_columns<C, 8>(sums, out_w, block_w, channels, totals); break;
    default: reduce_columns<C, 0>(sums, out_w, block_w, channels, totals); break;
  }
}

}  // namespace

void box_downsample(const ImageView& image, int block_h, int block_w, std::uint8_t* out) {
  const int out_h = image.height / block_h;
  const int out_w = image.width / block_w;
  const int c = image.channels;
  const std::size_t row_len =
      static_cast<std::size_t>(out_w) * static_cast<std::size_t>(block_w) * static_cast<std::size_t>(c);
  // Mean = total * (1 / area) in float, rounded to nearest, ties to even: what OpenCV's
  // INTER_AREA computes for integer factors, so the two agree exactly. Totals are below 2^24,
  // so they convert exactly; adding and subtracting 2^23 rounds a non-negative float below
  // 2^23 to an integer (ties to even) in plain arithmetic, which the compiler vectorises
  // (an integer division, or a call to rint, would cost more than all the adds).
  const float inverse_area = 1.0f / static_cast<float>(block_h * block_w);
  constexpr float kRound = 8388608.0f;  // 2^23
  const std::size_t out_row = static_cast<std::size_t>(out_w) * static_cast<std::size_t>(c);
  std::vector<std::uint32_t> totals(out_row);
  // Column sums of one block row: plain adds over contiguous bytes, which the compiler
  // vectorises. The per-block step after it touches only 1/block_h of the pixels.
  std::vector<std::uint32_t> sums(row_len);
  for (int oy = 0; oy < out_h; ++oy) {
    const std::uint8_t* row = image.data + static_cast<std::ptrdiff_t>(oy) * block_h * image.row_stride;
    for (std::size_t i = 0; i < row_len; ++i) sums[i] = row[i];
    for (int dy = 1; dy < block_h; ++dy) {
      row += image.row_stride;
      for (std::size_t i = 0; i < row_len; ++i) sums[i] += row[i];
    }
    switch (c) {
      case 1: reduce_columns_for<1>(sums.data(), out_w, block_w, c, totals.data()); break;
      case 3: reduce_columns_for<3>(sums.data(), out_w, block_w, c, totals.data()); break;
      default: reduce_columns_for<0>(sums.data(), out_w, block_w, c, totals.data()); break;
    }
    std::uint8_t* dst = out + static_cast<std::size_t>(oy) * out_row;
    for (std::size_t i = 0; i < out_row; ++i)
      dst[i] = static_cast<std::uint8_t>(
          (static_cast<float>(totals[i]) * inverse_area + kRound) - kRound);
  }
}

}  // namespace anomaly_edge
