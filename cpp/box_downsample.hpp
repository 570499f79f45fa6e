// Shrinking a uint8 image by whole blocks of pixels: the antialiasing half of the host resize
// (anomaly_edge.images.resize_for_network). No Python here; bindings.cpp wraps it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace anomaly_edge {

// A read-only uint8 image: rows of width * channels bytes, row_stride bytes apart (a crop of a
// larger frame has a stride wider than its rows).
struct ImageView {
  const std::uint8_t* data;
  int height;
  int width;
  int channels;
  std::ptrdiff_t row_stride;
};

// Writes the (height / block_h) x (width / block_w) x channels image whose every pixel is the
// mean of one block_h x block_w block to `out` (contiguous), computed as OpenCV's INTER_AREA
// does for integer factors (total * (1 / area) in float, rounded to nearest even), so the two
// give the same numbers. Edge rows and columns that do not fill a whole block are ignored.
// Blocks of up to 65535 pixels.
void box_downsample(const ImageView& image, int block_h, int block_w, std::uint8_t* out);

}  // namespace anomaly_edge
