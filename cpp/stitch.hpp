// Stitching tile maps into one frame map: the anomaly maps of overlapping tiles (one batch
// through the network) become one map of the frame they were cut from, before scoring and
// region extraction, so a defect across a tile border is one region.
//
// Tiles form a full grid: rows start at `ys`, columns at `xs` (ascending, the first 0, the last
// tile ending on the frame's edge, no gaps), tile (r, c) is tiles[r * cols + c]. Where tiles
// overlap their values are blended with weights that fall smoothly to the tile's edge across
// the overlap with its neighbour (a raised cosine, so two weights always sum to one and the map
// has no seams); `Blend::Average` weighs every covering tile alike.
//
// Plain C++17, no Python; pure (any number of threads may call it). Bad arguments throw
// std::invalid_argument.
#pragma once

#include <vector>

namespace anomaly_edge {

enum class Blend { Cosine, Average };

// The 1-D weights of one axis: weights[k][i] is the normalised weight of tile k (of this axis)
// at frame coordinate starts[k] + i; for every frame coordinate the weights of the tiles that
// cover it sum to one.
std::vector<std::vector<float>> axis_weights(const std::vector<int>& starts, int tile, int frame,
                                             Blend blend);

// Throws std::invalid_argument unless the starts tile [0, frame) with tiles of `tile` pixels:
// ascending, first 0, last + tile == frame, each gap at most `tile`. `axis` names it in errors.
void check_starts(const std::vector<int>& starts, int tile, int frame, const char* axis);

// out[frame_h * frame_w] = blend of tiles[(ys.size() * xs.size()) * tile_h * tile_w].
// Every input value must be finite (a NaN would spread over the overlap).
void stitch_tiles(const float* tiles, int tile_h, int tile_w, const std::vector<int>& ys,
                  const std::vector<int>& xs, int frame_h, int frame_w, Blend blend, float* out);

}  // namespace anomaly_edge
