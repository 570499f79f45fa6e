// The anomaly-edge post-processor: from a raw anomaly map at model resolution to a score, a
// label, boxes around anomalous regions and a pixel mask at frame resolution.
//
// A plain C++17 library with no Python in it; cpp/bindings.cpp turns it into the extension
// anomaly_edge._post. Every function is pure (no shared mutable state), so any number of
// threads may call it at once. Invalid arguments throw std::invalid_argument.
//
// The per-pixel work runs in kernels for the instruction set `isa` (cpu_dispatch.hpp); every
// ISA gives bit-identical results, only the speed differs. It defaults to active_isa().
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu_dispatch.hpp"

namespace anomaly_edge {

// Largest accepted side of a map or a frame: anything bigger is a caller's mistake, and the
// limit keeps every pixel offset comfortably inside 64-bit arithmetic.
constexpr int kMaxSide = 32768;

enum class Task { Classification, Detection, Segmentation };

// Thresholds and normalisation statistics, in raw anomaly-map units.
// normalised = clip((raw - threshold) / scale + 0.5, 0, 1). Every score a user sees (the
// image score, region scores, the heatmap) is in one unit, the image's: image_threshold and
// image_scale; 0.5 sits on the image threshold. pixel_scale is kept for the metadata
// (Model API's normalization_scale) and plays no part here.
// Thresholds are applied in float32, the precision of the map (as NumPy would compare a
// float32 array with a Python float), so a value equal to the rounded threshold counts as
// anomalous and normalises to exactly 0.5.
struct Params {
  double image_threshold = 0.0;
  double pixel_threshold = 0.0;
  double image_scale = 1.0;
  double pixel_scale = 1.0;
  std::int64_t min_area = 1;  // regions smaller than this (in map pixels) are dropped
};

// A read-only, row-major, contiguous float32 map.
struct MapView {
  const float* data = nullptr;
  int height = 0;
  int width = 0;
};

// One connected region of anomalous map pixels (8-connectivity).
struct Region {
  int x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // frame pixels; x2 and y2 exclusive
  double score = 0.0;                  // normalised maximum (image units)
  double mean_score = 0.0;             // mean of the normalised pixel scores (image units)
  std::int64_t area = 0;               // in map pixels
};

// What one map says. Mask and heatmap go into caller-owned buffers (see Outputs).
struct Result {
  double score = 0.0;  // normalised image score
  bool label = false;  // raw_score >= image threshold
  double raw_score = 0.0;
  std::vector<Region> regions;  // highest score first; empty for classification
};

// Where to write the frame-resolution images (frame_height * frame_width bytes each, row-major);
// nullptr = not wanted. The mask is 0 / 255.
struct Outputs {
  std::uint8_t* mask = nullptr;
  std::uint8_t* heatmap = nullptr;
};

// Largest value and whether every value is finite.
struct MapStats {
  float max = 0.0f;
  bool finite = true;
};

// Throws std::invalid_argument unless params make sense (finite thresholds, positive finite
// scales, min_area >= 0).
void check_params(const Params& params);

// Throws std::invalid_argument unless the map and frame sizes are within 1..kMaxSide.
void check_sizes(const MapView& map, int frame_height, int frame_width);

MapStats scan_map(const MapView& map, Isa isa = active_isa());

// clip((raw - threshold) / scale + 0.5, 0, 1)
double normalise(double raw, double threshold, double scale);

// Every connected component of (map >= pixel threshold), whatever the label: the raw
// material of the decision, for tests and tools. Boxes scaled to the frame, filtered by
// min_area, scores in image units, sorted by score (highest first, ties in raster order of
// their first pixel).
std::vector<Region> find_regions(const MapView& map, int frame_height, int frame_width,
                                 const Params& params, Isa isa = active_isa());

// Bilinear upsampling of the map to the frame (OpenCV INTER_LINEAR convention) fused with the
// threshold: out = 255 where the interpolated value >= threshold, else 0.
void render_mask(const MapView& map, float threshold, std::uint8_t* out, int frame_height,
                 int frame_width, Isa isa = active_isa());

// round(255 * bilinear(normalised map)) at frame resolution.
void render_heatmap(const MapView& map, double threshold, double scale, std::uint8_t* out,
                    int frame_height, int frame_width, Isa isa = active_isa());

// Everything the task asks for: one decision, whatever the task. With has_raw_score = false
// the image's raw score is the map's maximum.
//  - label = raw score >= image threshold; score = normalised raw score.
//  - Normal: no regions, and an all-zero mask.
//  - Anomaly: the regions are the 8-connected components of (map >= extent) whose maximum
//    reaches the seed, where seed = min(image threshold, map maximum): each region on its
//    own would flag the image. Their outline follows the pixel threshold (extent = pixel
//    threshold), except where the map's peak stays below it: then extent = seed, so a pixel
//    threshold above the image threshold cannot hide the region that flagged the image. Components
//    under min_area are dropped, except the one holding the map's peak, so there is always
//    at least one region and the peak lies in one. The mask covers exactly the reported
//    regions (bilinear at frame resolution); where smoothing leaves no frame pixel of a
//    one-pixel peak above the extent, the peak's own frame pixels are marked.
//  - The heatmap, when asked for, is the whole map in image units, whatever the label. Throws std::invalid_argument for bad sizes or params, a non-finite raw score, a
// map with NaN/inf, or an ISA this CPU cannot run.
Result postprocess(const MapView& map, bool has_raw_score, double raw_score, int frame_height,
                   int frame_width, const Params& params, Task task, const Outputs& outputs,
                   Isa isa = active_isa());

}  // namespace anomaly_edge
