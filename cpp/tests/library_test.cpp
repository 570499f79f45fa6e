// The post-processor as a plain C++ library, without Python: the promise of cpp/ that a C++
// program can use it. Built and run by ctest (CMake option AE_BUILD_TESTS, see
// tools/ctest.sh and tools/sanitize.sh); the Python tests cover the same functions in depth
// through the bindings.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "box_downsample.hpp"
#include "cpu_dispatch.hpp"
#include "postprocess.hpp"
#include "stitch.hpp"

namespace ae = anomaly_edge;

namespace {

int failures = 0;

void check(bool ok, const std::string& what, int line) {
  if (ok) return;
  ++failures;
  std::fprintf(stderr, "library_test.cpp:%d: FAILED: %s\n", line, what.c_str());
}
#define CHECK(cond) check((cond), #cond, __LINE__)

// True when `f` throws std::invalid_argument whose message contains `needle`.
bool throws_invalid(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

const ae::Params kParams{0.5, 0.5, 1.0, 1.0, 1};

void params_are_checked() {
  CHECK(throws_invalid([] { ae::check_params({NAN, 0.5, 1.0, 1.0, 1}); }, "finite"));
  CHECK(throws_invalid([] { ae::check_params({0.5, 1e300, 1.0, 1.0, 1}); }, "float32"));
  CHECK(throws_invalid([] { ae::check_params({0.5, 0.5, 0.0, 1.0, 1}); }, "scale"));
  CHECK(throws_invalid([] { ae::check_params({0.5, 0.5, 1.0, 1.0, -1}); }, "min_area"));
  ae::check_params(kParams);  // a good one passes quietly
}

void scores_are_normalised_around_the_threshold() {
  CHECK(ae::normalise(0.5, 0.5, 1.0) == 0.5);
  CHECK(ae::normalise(1.0, 0.5, 2.0) == 0.75);
  CHECK(ae::normalise(100.0, 0.5, 1.0) == 1.0);
  CHECK(ae::normalise(-100.0, 0.5, 1.0) == 0.0);
}

// An 8 x 8 map with two regions: a diagonal pair (one region under 8-connectivity) and a
// single pixel; the frame is 4x the map, so boxes scale by 4.
void regions_boxes_and_mask() {
  std::vector<float> values(64, 0.0f);
  values[1 * 8 + 1] = 0.9f;
  values[2 * 8 + 2] = 0.8f;  // diagonal neighbour of (1, 1)
  values[6 * 8 + 5] = 0.7f;
  const ae::MapView map{values.data(), 8, 8};
  for (ae::Isa isa : ae::supported_isas()) {
    std::vector<std::uint8_t> mask(32 * 32, 7);
    const ae::Result r = ae::postprocess(map, false, 0.0, 32, 32, kParams,
                                         ae::Task::Segmentation, {mask.data(), nullptr}, isa);
    CHECK(r.label);
    CHECK(std::fabs(r.raw_score - 0.9) < 1e-6);
    CHECK(r.regions.size() == 2);
    if (r.regions.size() == 2) {
      CHECK(r.regions[0].area == 2);  // the diagonal pair, highest score first
      CHECK(r.regions[0].x1 == 4 && r.regions[0].y1 == 4);
      CHECK(r.regions[0].x2 == 12 && r.regions[0].y2 == 12);
      CHECK(r.regions[1].area == 1);
    }
    int on = 0;
    for (std::uint8_t v : mask) {
      CHECK(v == 0 || v == 255);
      on += v == 255;
    }
    CHECK(on > 0 && on < 32 * 32 / 4);
  }
  // The decision: above the map's peak the image is Normal, with no region and a zeroed mask.
  {
    std::vector<std::uint8_t> mask(32 * 32, 7);
    const ae::Result r = ae::postprocess(map, false, 0.0, 32, 32, {0.95, 0.5, 1.0, 1.0, 1},
                                         ae::Task::Segmentation, {mask.data(), nullptr});
    CHECK(!r.label && r.regions.empty());
    for (std::uint8_t v : mask) CHECK(v == 0);
  }
  // min_area drops the single pixel; classification gives no regions at all.
  CHECK(ae::find_regions(map, 32, 32, {0.5, 0.5, 1.0, 1.0, 2}).size() == 1);
  CHECK(ae::postprocess(map, false, 0.0, 32, 32, kParams, ae::Task::Classification, {})
            .regions.empty());
}

void bad_maps_are_refused() {
  std::vector<float> values(16, 0.0f);
  values[5] = NAN;
  const ae::MapView map{values.data(), 4, 4};
  CHECK(throws_invalid(
      [&] { ae::postprocess(map, false, 0, 8, 8, kParams, ae::Task::Detection, {}); }, "NaN"));
  const ae::MapView empty{values.data(), 0, 4};
  CHECK(throws_invalid([&] { ae::check_sizes(empty, 8, 8); }, ""));
}

// Every ISA this CPU runs gives the same bytes as the portable baseline.
void every_isa_agrees_with_the_baseline() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> values(37 * 53);
  for (float& v : values) v = uniform(rng);
  const ae::MapView map{values.data(), 37, 53};
  const int fh = 301, fw = 517;
  std::vector<std::uint8_t> base_mask(fh * fw), base_heat(fh * fw);
  const ae::Result base =
      ae::postprocess(map, false, 0.0, fh, fw, kParams, ae::Task::Segmentation,
                      {base_mask.data(), base_heat.data()}, ae::Isa::Baseline);
  for (ae::Isa isa : ae::supported_isas()) {
    std::vector<std::uint8_t> mask(fh * fw), heat(fh * fw);
    const ae::Result r = ae::postprocess(map, false, 0.0, fh, fw, kParams,
                                         ae::Task::Segmentation, {mask.data(), heat.data()}, isa);
    CHECK(mask == base_mask);
    CHECK(heat == base_heat);
    CHECK(r.regions.size() == base.regions.size());
    CHECK(r.score == base.score);
  }
}

void isa_override_is_process_wide_and_checked() {
  const ae::Isa before = ae::active_isa();
  ae::set_isa_override(ae::Isa::Baseline);
  CHECK(ae::active_isa() == ae::Isa::Baseline);
  ae::clear_isa_override();
  CHECK(ae::active_isa() == ae::default_isa());
  CHECK(ae::active_isa() == before);
  CHECK(throws_invalid([] { ae::parse_isa("sse9"); }, "unknown instruction set"));
  if (!ae::isa_supported(ae::Isa::Avx512)) {
    CHECK(throws_invalid([] { ae::set_isa_override(ae::Isa::Avx512); }, "cannot run"));
    CHECK(ae::active_isa() == before);  // a refused switch changes nothing
  }
}

void box_downsample_takes_block_means() {
  // 2 x 4 grey image, 2 x 2 blocks: means of {0, 2, 4, 6} = 3 and {10, 20, 30, 41} = 25.25.
  const std::uint8_t pixels[] = {0, 2, 10, 20, 4, 6, 30, 41};
  const ae::ImageView image{pixels, 2, 4, 1, 4};
  std::uint8_t out[2] = {0, 0};
  ae::box_downsample(image, 2, 2, out);
  CHECK(out[0] == 3);
  CHECK(out[1] == 25);
}

void stitch_blends_tiles_into_one_map() {
  // Two 4 x 6 tiles over a 4 x 8 frame (overlap 4 columns): a constant 1 and a constant 3.
  std::vector<float> tiles(2 * 4 * 6);
  for (std::size_t i = 0; i < tiles.size(); ++i) tiles[i] = i < 24 ? 1.0f : 3.0f;
  std::vector<float> out(4 * 8);
  ae::stitch_tiles(tiles.data(), 4, 6, {0}, {0, 2}, 4, 8, ae::Blend::Cosine, out.data());
  CHECK(out[0] == 1.0f && out[1] == 1.0f);  // only the first tile covers columns 0-1
  CHECK(out[6] == 3.0f && out[7] == 3.0f);  // only the second covers columns 6-7
  for (int x = 1; x < 8; ++x) CHECK(out[static_cast<std::size_t>(x)] >= out[x - 1]);  // smooth
  CHECK(std::fabs(out[3] + out[4] - 4.0f) < 1e-5f);  // symmetric cross-over
  CHECK(throws_invalid(
      [&] { ae::stitch_tiles(tiles.data(), 4, 6, {0}, {0, 3}, 4, 8, ae::Blend::Cosine,
                             out.data()); },
      "end on the frame's edge"));
  tiles[30] = NAN;
  CHECK(throws_invalid(
      [&] { ae::stitch_tiles(tiles.data(), 4, 6, {0}, {0, 2}, 4, 8, ae::Blend::Average,
                             out.data()); },
      "NaN"));
}

}  // namespace

int main() {
  params_are_checked();
  scores_are_normalised_around_the_threshold();
  regions_boxes_and_mask();
  bad_maps_are_refused();
  every_isa_agrees_with_the_baseline();
  isa_override_is_process_wide_and_checked();
  box_downsample_takes_block_means();
  stitch_blends_tiles_into_one_map();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("library_test: all checks passed (ISAs:");
  for (ae::Isa isa : ae::supported_isas()) std::printf(" %s", ae::isa_name(isa));
  std::printf(")\n");
  return 0;
}
