// See stitch.hpp. The weights are separable: tile (r, c) weighs w_r(y) * w_c(x), and as the
// tiles form a full grid the sum over the tiles covering (y, x) factors into
// (sum_r w_r(y)) * (sum_c w_c(x)). Normalising each axis on its own is therefore enough, and
// the stitch is one pass of multiply-adds with no weight-sum buffer.
#include "stitch.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "postprocess.hpp"  // kMaxSide

namespace anomaly_edge {

namespace {

constexpr double kPi = 3.14159265358979323846;

// Raised cosine across a ramp of `ramp` pixels: near 0 at the outer edge, 1 at the inner end;
// sampled at pixel centres, so it is never exactly zero and two mirrored ramps sum to one.
double ramp_weight(int i, int ramp) {
  const double t = (i + 0.5) / ramp;
  return 0.5 - 0.5 * std::cos(kPi * t);
}

// dst[x] += row_weight * col_weight[x] * src[x]; restrict lets the compiler vectorise it.
void accumulate_row(float* __restrict dst, const float* __restrict src,
                    const float* __restrict col_weight, float row_weight, int width) {
  for (int x = 0; x < width; ++x) dst[x] += row_weight * col_weight[x] * src[x];
}

}  // namespace

void check_starts(const std::vector<int>& starts, int tile, int frame, const char* axis) {
  const std::string name(axis);
  if (tile < 1 || frame < 1 || tile > kMaxSide || frame > kMaxSide)
    throw std::invalid_argument(name + ": tile and frame sides must be between 1 and " +
                                std::to_string(kMaxSide) + ", got tile " + std::to_string(tile) +
                                " and frame " + std::to_string(frame));
  if (starts.empty()) throw std::invalid_argument(name + ": at least one tile is needed");
  if (starts.front() != 0)
    throw std::invalid_argument(name + ": the first tile must start at 0, got " +
                                std::to_string(starts.front()));
  for (std::size_t k = 1; k < starts.size(); ++k) {
    const int gap = starts[k] - starts[k - 1];
    if (gap <= 0 || gap > tile)
      throw std::invalid_argument(
          name + ": tile starts must ascend by 1.." + std::to_string(tile) +
          " pixels (no gaps between tiles), got " + std::to_string(starts[k - 1]) + " then " +
          std::to_string(starts[k]));
  }
  if (starts.back() + tile != frame)
    throw std::invalid_argument(name + ": the last tile must end on the frame's edge: it starts at " +
                                std::to_string(starts.back()) + " and is " + std::to_string(tile) +
                                " long, the frame " + std::to_string(frame));
}

std::vector<std::vector<float>> axis_weights(const std::vector<int>& starts, int tile, int frame,
                                             Blend blend) {
  check_starts(starts, tile, frame, "tiles");
  const std::size_t count = starts.size();
  std::vector<std::vector<double>> raw(count, std::vector<double>(static_cast<std::size_t>(tile)));
  for (std::size_t k = 0; k < count; ++k) {
    // Ramp only towards a neighbour, over exactly the overlap with it: no ramp at the frame edge.
    const int before = k > 0 ? starts[k - 1] + tile - starts[k] : 0;
    const int after = k + 1 < count ? starts[k] + tile - starts[k + 1] : 0;
    for (int i = 0; i < tile; ++i) {
      double w = 1.0;
      if (blend == Blend::Cosine) {
        if (i < before) w = std::min(w, ramp_weight(i, before));
        if (tile - 1 - i < after) w = std::min(w, ramp_weight(tile - 1 - i, after));
      }
      raw[k][static_cast<std::size_t>(i)] = w;
    }
  }
  std::vector<double> total(static_cast<std::size_t>(frame), 0.0);
  for (std::size_t k = 0; k < count; ++k)
    for (int i = 0; i < tile; ++i)
      total[static_cast<std::size_t>(starts[k] + i)] += raw[k][static_cast<std::size_t>(i)];
  std::vector<std::vector<float>> weights(count, std::vector<float>(static_cast<std::size_t>(tile)));
  for (std::size_t k = 0; k < count; ++k)
    for (int i = 0; i < tile; ++i)
      weights[k][static_cast<std::size_t>(i)] = static_cast<float>(
          raw[k][static_cast<std::size_t>(i)] / total[static_cast<std::size_t>(starts[k] + i)]);
  return weights;
}

void stitch_tiles(const float* tiles, int tile_h, int tile_w, const std::vector<int>& ys,
                  const std::vector<int>& xs, int frame_h, int frame_w, Blend blend, float* out) {
  check_starts(ys, tile_h, frame_h, "rows");
  check_starts(xs, tile_w, frame_w, "columns");
  const auto wy = axis_weights(ys, tile_h, frame_h, blend);
  const auto wx = axis_weights(xs, tile_w, frame_w, blend);
  const std::size_t tile_size = static_cast<std::size_t>(tile_h) * static_cast<std::size_t>(tile_w);
  const std::size_t frame_size =
      static_cast<std::size_t>(frame_h) * static_cast<std::size_t>(frame_w);
  for (std::size_t i = 0; i < frame_size; ++i) out[i] = 0.0f;
  for (std::size_t r = 0; r < ys.size(); ++r) {
    for (std::size_t c = 0; c < xs.size(); ++c) {
      const float* tile = tiles + (r * xs.size() + c) * tile_size;
      const float* col_weight = wx[c].data();
      for (int y = 0; y < tile_h; ++y) {
        const float row_weight = wy[r][static_cast<std::size_t>(y)];
        const float* src = tile + static_cast<std::size_t>(y) * static_cast<std::size_t>(tile_w);
        float* dst = out + static_cast<std::size_t>(ys[r] + y) * static_cast<std::size_t>(frame_w) +
                     static_cast<std::size_t>(xs[c]);
        accumulate_row(dst, src, col_weight, row_weight, tile_w);
      }
    }
  }
  // Every weight is positive, so a NaN or infinity in any tile (or an overflow) shows here:
  // one check of the output instead of one of every, overlapping, input.
  for (std::size_t i = 0; i < frame_size; ++i)
    if (!std::isfinite(out[i]))
      throw std::invalid_argument("tile maps hold NaN or infinite values (frame pixel row " +
                                  std::to_string(i / static_cast<std::size_t>(frame_w)) + ")");
}

}  // namespace anomaly_edge
