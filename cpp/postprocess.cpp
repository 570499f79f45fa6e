// The post-processor's algorithms (see postprocess.hpp for what each function promises).
//
// Speed comes from never touching a frame pixel twice and from doing per-pixel arithmetic
// only where the answer is in doubt: the map is thresholded once at model resolution into a
// byte mask; components are labelled on runs of that mask; the frame-resolution mask is
// written span by span, with memset wherever the four source samples of a bilinear blend
// agree. The per-element loops are kernels (kernels.hpp) in one version per instruction set.
#include "postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels.hpp"

namespace anomaly_edge {
namespace {

using kernels::kAll;
using kernels::kNone;
using kernels::kPadding;
using kernels::kSome;
using kernels::Straddle;

// The kernels for `isa`, once it is known that this CPU runs them.
const kernels::Table& checked_kernels(Isa isa) {
  require_supported(isa, "instruction set");
  return kernels::table_for(isa);
}

// ---- the thresholded map -------------------------------------------------------------------

// (map >= threshold) as 0/1 bytes, with per-row summaries; computed once per call and shared
// by the component labelling and the mask rendering.
struct Thresholded {
  std::vector<std::uint8_t> above;     // height * width bytes, 0 or 1
  std::vector<std::uint8_t> row_kind;  // per row: kNone, kAll or kSome
};

Thresholded threshold_map(const MapView& map, float threshold, const kernels::Table& k) {
  Thresholded t;
  t.above.resize(static_cast<std::size_t>(map.height) * map.width);
  t.row_kind.resize(static_cast<std::size_t>(map.height));
  for (int y = 0; y < map.height; ++y) {
    const std::size_t offset = static_cast<std::size_t>(y) * map.width;
    t.row_kind[static_cast<std::size_t>(y)] =
        k.threshold_row(map.data + offset, map.width, threshold, t.above.data() + offset);
  }
  return t;
}

// First index in [from, n) whose byte is (set ? non-zero : zero), or n; eight bytes at a
// time across long stretches.
int next_with(const std::uint8_t* bytes, int from, int n, bool set) {
  const std::uint64_t skip = set ? 0 : 0x0101010101010101ull;  // a word with nothing to find
  while (from + 8 <= n) {
    std::uint64_t word;
    std::memcpy(&word, bytes + from, sizeof word);
    if (word != skip) break;
    from += 8;
  }
  while (from < n && (bytes[from] != 0) != set) ++from;
  return from;
}

// ---- bilinear geometry ---------------------------------------------------------------------

// The two source samples an output coordinate blends, and the weight of the second.
struct Tap {
  int lo;
  int hi;
  float frac;
};

// OpenCV's INTER_LINEAR geometry (half-pixel centres): src = (dst + 0.5) * src_size / dst_size
// - 0.5, with the same float rounding OpenCV uses, so our mask agrees with cv2.resize up to
// threshold ties. Columns outside the map take the border sample with weight 0 (as OpenCV
// does for x); rows clamp the sample indices and keep the weight (as OpenCV does for y).
std::vector<Tap> linear_taps(int src, int dst, bool zero_weight_at_border) {
  std::vector<Tap> taps(static_cast<std::size_t>(dst));
  const double scale = 1.0 / (static_cast<double>(dst) / src);
  for (int d = 0; d < dst; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    Tap& tap = taps[static_cast<std::size_t>(d)];
    if (zero_weight_at_border) {
      if (s < 0) s = 0, f = 0.0f;
      if (s >= src - 1) s = src - 1, f = 0.0f;
      tap = {s, std::min(s + 1, src - 1), f};
    } else {
      tap = {std::clamp(s, 0, src - 1), std::clamp(s + 1, 0, src - 1), f};
    }
  }
  return taps;
}

// Model pixel x covers frame columns [floor(x * W / w), ceil((x + 1) * W / w)).
int scale_floor(int model_coord, int frame_size, int model_size) {
  return static_cast<int>(static_cast<std::int64_t>(model_coord) * frame_size / model_size);
}
int scale_ceil(int model_coord, int frame_size, int model_size) {
  return static_cast<int>(
      (static_cast<std::int64_t>(model_coord) * frame_size + model_size - 1) / model_size);
}

// ---- connected components ------------------------------------------------------------------

// A horizontal run of anomalous pixels in one map row: the unit of the labelling.
struct Run {
  int row;
  int begin;  // first column
  int end;    // one past the last column
  float max_raw;
  double normalised_sum;
};

// Largest of row[begin, end) (begin < end) in eight independent lanes, which the compiler
// turns into vector maxima, instead of one chain of dependent ones. A maximum is the same
// whatever the order (the map is finite); only the sign of a zero maximum may differ, and
// neither a score nor a comparison tells +0 from -0.
float run_max(const float* row, int begin, int end) {
  constexpr int kLanes = 8;
  float lanes[kLanes];
  for (float& lane : lanes) lane = row[begin];
  int x = begin + 1;
  for (; x + kLanes <= end; x += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] = lanes[j] < row[x + j] ? row[x + j] : lanes[j];
  float result = lanes[0];
  for (int j = 1; j < kLanes; ++j) result = std::max(result, lanes[j]);
  for (; x < end; ++x) result = std::max(result, row[x]);
  return result;
}

// Floats in the order of their values as integers (-0 and +0 alike), and back.
std::int64_t float_order(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x80000000u) != 0 ? -static_cast<std::int64_t>(bits & 0x7fffffffu)
                                   : static_cast<std::int64_t>(bits);
}
float float_at(std::int64_t order) {
  const std::uint32_t bits = order >= 0 ? static_cast<std::uint32_t>(order)
                                        : 0x80000000u | static_cast<std::uint32_t>(-order);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// The smallest finite float whose score(value) is > 0, for a score that never decreases
// as the value grows (+inf when none scores, -inf when all do); found by bisection over
// the floats, so the answer is exact whatever the rounding inside `score`.
template <typename Score>
float first_above_zero(Score score) {
  constexpr float kLargest = std::numeric_limits<float>::max();
  constexpr float kInfinity = std::numeric_limits<float>::infinity();
  if (!(score(kLargest) > 0.0)) return kInfinity;
  if (score(-kLargest) > 0.0) return -kInfinity;
  std::int64_t zero = float_order(-kLargest), positive = float_order(kLargest);
  while (positive - zero > 1) {
    const std::int64_t middle = zero + (positive - zero) / 2;
    (score(float_at(middle)) > 0.0 ? positive : zero) = middle;
  }
  return float_at(positive);
}

// Union-find over run indices; the smaller index is the root, so a component's root is its
// first run in raster order.
class DisjointRuns {
 public:
  void add() { parent_.push_back(static_cast<int>(parent_.size())); }
  int find(int i) {
    while (parent_[static_cast<std::size_t>(i)] != i) {
      int& p = parent_[static_cast<std::size_t>(i)];
      p = parent_[static_cast<std::size_t>(p)];  // path halving
      i = p;
    }
    return i;
  }
  void unite(int a, int b) {
    a = find(a);
    b = find(b);
    if (a == b) return;
    if (a < b)
      parent_[static_cast<std::size_t>(b)] = a;
    else
      parent_[static_cast<std::size_t>(a)] = b;
  }

 private:
  std::vector<int> parent_;
};

struct Component {
  int x1, y1, x2, y2;  // model pixels, x2/y2 exclusive
  std::int64_t area;
  float max_raw;
  double normalised_sum;
};

// Which components become regions, and in which unit their scores are given.
struct RegionRule {
  float seed;                  // a component is reported only if its maximum is >= seed
  double unit_threshold;       // scores: normalise(raw, unit_threshold, unit_scale)
  double unit_scale;
  std::int64_t min_area;       // smaller components are dropped ...
  bool keep_peak = false;      // ... except, if asked, the one holding the map's peak: its
  float peak = 0.0f;           // first pixel (raster order) equal to this value, the maximum
};

// A run of a component that was not reported, so the mask can leave it out.
struct DroppedRun {
  int row, begin, end;
};

// With rule.keep_peak the peak must be at or above the mask's threshold (so that it lies in a
// run); *peak_index then receives its map index, found on the way: the runs already visit
// every anomalous pixel, so the whole map need not be searched again.
std::vector<Region> find_regions_in(const MapView& map, const Thresholded& mask,
                                    int frame_height, int frame_width, const RegionRule& rule,
                                    std::vector<DroppedRun>* dropped = nullptr,
                                    std::int64_t* peak_index = nullptr) {
  const int h = map.height;
  const int w = map.width;
  const double unit_threshold = static_cast<float>(rule.unit_threshold);
  const double inverse_scale = 1.0 / rule.unit_scale;
  // A pixel's share of its region's mean score. On real maps most pixels of a region lie far
  // enough under the image threshold to score exactly 0 (the pixel threshold sits well below
  // it), and summing them cost most of this function.
  const auto term = [=](float raw) {
    return std::clamp((raw - unit_threshold) * inverse_scale + 0.5, 0.0, 1.0);
  };
  // A scale so small that its inverse overflows makes a pixel on the threshold score NaN
  // (0 * inf), which no bisection can place: then every pixel is summed, as ever.
  const float scoring = std::isfinite(inverse_scale)
                            ? first_above_zero(term)
                            : -std::numeric_limits<float>::infinity();

  // Pass 1: runs of anomalous pixels, linked to touching runs of the row above.
  std::vector<Run> runs;
  DisjointRuns sets;
  int peak_run = -1;
  std::size_t above_begin = 0, above_end = 0;  // runs of the previous row
  for (int y = 0; y < h; ++y) {
    const std::size_t row_begin = runs.size();
    if (mask.row_kind[static_cast<std::size_t>(y)] != kNone) {
      const float* row = map.data + static_cast<std::size_t>(y) * w;
      const std::uint8_t* bits = mask.above.data() + static_cast<std::size_t>(y) * w;
      for (int x = next_with(bits, 0, w, true); x < w; x = next_with(bits, x, w, true)) {
        Run run{y, x, next_with(bits, x, w, false), row[x], 0.0};
        run.max_raw = run_max(row, x, run.end);
        // Only pixels from `scoring` up add to the sum, in the same order as ever: the
        // others add a zero, which changes no bit of it.
        if (run.max_raw >= scoring)
          for (int i = x; i < run.end; ++i)
            if (row[i] >= scoring) run.normalised_sum += term(row[i]);
        x = run.end;
        // Runs come in raster order, so the first run reaching the peak holds its first
        // pixel (== also matches a -0 peak to +0, as std::max_element's order would).
        if (rule.keep_peak && peak_run < 0 && run.max_raw == rule.peak)
          peak_run = static_cast<int>(runs.size());
        runs.push_back(run);
        sets.add();
      }
    }
    const std::size_t row_end = runs.size();
    // 8-connectivity: runs touch when their column ranges overlap or meet diagonally.
    std::size_t a = above_begin, c = row_begin;
    while (a < above_end && c < row_end) {
      const Run& up = runs[a];
      const Run& cur = runs[c];
      if (up.end < cur.begin) {
        ++a;
      } else if (cur.end < up.begin) {
        ++c;
      } else {
        sets.unite(static_cast<int>(a), static_cast<int>(c));
        // The run that ends first can touch nothing further right in the other row.
        if (up.end < cur.end)
          ++a;
        else
          ++c;
      }
    }
    above_begin = row_begin;
    above_end = row_end;
  }

  // Pass 2: per-component statistics, components in raster order of their first pixel.
  std::vector<Component> components;
  std::vector<int> component_of(runs.size(), -1);
  std::vector<int> run_component(runs.size());
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const Run& run = runs[i];
    const int root = sets.find(static_cast<int>(i));
    int& index = component_of[static_cast<std::size_t>(root)];
    if (index < 0) {
      index = static_cast<int>(components.size());
      components.push_back({run.begin, run.row, run.end, run.row + 1, 0, run.max_raw, 0.0});
    }
    run_component[i] = index;
    Component& comp = components[static_cast<std::size_t>(index)];
    comp.x1 = std::min(comp.x1, run.begin);
    comp.x2 = std::max(comp.x2, run.end);
    comp.y2 = run.row + 1;  // runs arrive row by row
    comp.area += run.end - run.begin;
    comp.max_raw = std::max(comp.max_raw, run.max_raw);
    comp.normalised_sum += run.normalised_sum;
  }
  const int peak_component =
      peak_run >= 0 ? run_component[static_cast<std::size_t>(peak_run)] : -1;
  if (peak_index != nullptr && peak_run >= 0) {
    const Run& run = runs[static_cast<std::size_t>(peak_run)];
    const float* row = map.data + static_cast<std::size_t>(run.row) * w;
    const int x = static_cast<int>(std::find(row + run.begin, row + run.end, rule.peak) - row);
    *peak_index = static_cast<std::int64_t>(run.row) * w + x;
  }

  // Keep, scale to the frame, sort by score.
  std::vector<Region> regions;
  std::vector<std::uint8_t> kept(components.size(), 0);
  regions.reserve(components.size());
  for (std::size_t i = 0; i < components.size(); ++i) {
    const Component& comp = components[i];
    const bool is_peak = static_cast<int>(i) == peak_component;
    if (!is_peak && (comp.max_raw < rule.seed || comp.area < rule.min_area)) continue;
    kept[i] = 1;
    Region r;
    r.x1 = scale_floor(comp.x1, frame_width, w);
    r.y1 = scale_floor(comp.y1, frame_height, h);
    r.x2 = scale_ceil(comp.x2, frame_width, w);
    r.y2 = scale_ceil(comp.y2, frame_height, h);
    r.score = normalise(comp.max_raw, unit_threshold, rule.unit_scale);
    // A mean never exceeds the maximum, even after the rounding of a long sum.
    r.mean_score = std::min(comp.normalised_sum / static_cast<double>(comp.area), r.score);
    r.area = comp.area;
    regions.push_back(r);
  }
  if (dropped != nullptr)
    for (std::size_t i = 0; i < runs.size(); ++i)
      if (!kept[static_cast<std::size_t>(run_component[i])])
        dropped->push_back({runs[i].row, runs[i].begin, runs[i].end});
  std::stable_sort(regions.begin(), regions.end(),
                   [](const Region& a, const Region& b) { return a.score > b.score; });
  return regions;
}

// ---- the frame-resolution mask -------------------------------------------------------------

// `patched_rows`, when given, holds one pointer per map row to read the row's values from
// instead of the map (rows in which some pixels were changed, the others pointing into it).
void render_mask_from(const kernels::Table& k, const MapView& map, const Thresholded& mask,
                      float threshold, std::uint8_t* out, int frame_height, int frame_width,
                      const float* const* patched_rows = nullptr) {
  const int w = map.width;
  auto map_row = [&](int y) {
    return patched_rows != nullptr ? patched_rows[y] : map.data + static_cast<std::size_t>(y) * w;
  };
  const std::vector<Tap> cols = linear_taps(w, frame_width, true);
  const std::vector<Tap> rows = linear_taps(map.height, frame_height, false);

  // Output columns that blend the same two source columns form a segment; within a segment
  // and a pair of source rows the four source samples are fixed. Segments are ordered by
  // their source columns, so first_segment[c] (the first segment whose `hi` >= c) lets a
  // scan jump over a stretch of source columns.
  struct Segment {
    int begin, end, lo, hi;
  };
  std::vector<Segment> segments;
  for (int x = 0; x < frame_width; ++x) {
    const Tap& t = cols[static_cast<std::size_t>(x)];
    if (segments.empty() || segments.back().lo != t.lo || segments.back().hi != t.hi)
      segments.push_back({x, x + 1, t.lo, t.hi});
    else
      segments.back().end = x + 1;
  }
  const int segment_count = static_cast<int>(segments.size());
  std::vector<int> first_segment(static_cast<std::size_t>(w) + 1);
  for (int c = 0, s = 0; c <= w; ++c) {
    while (s < segment_count && segments[static_cast<std::size_t>(s)].hi < c) ++s;
    first_segment[static_cast<std::size_t>(c)] = s;
  }
  // OpenCV's 1 - fx and fx, padded for the kernels' vector loads.
  std::vector<float> wx0(static_cast<std::size_t>(frame_width) + kPadding);
  std::vector<float> wx1(static_cast<std::size_t>(frame_width) + kPadding);
  for (int x = 0; x < frame_width; ++x) {
    wx1[static_cast<std::size_t>(x)] = cols[static_cast<std::size_t>(x)].frac;
    wx0[static_cast<std::size_t>(x)] = 1.0f - wx1[static_cast<std::size_t>(x)];
  }

  // Spans of one output row: all below (0), all above (255), or a segment whose four samples
  // straddle the threshold. They depend only on the pair of source rows, so they are rebuilt
  // about map.height times, not frame_height times; and the next output row of the same pair
  // starts as a copy of the previous one, with only the straddling segments recomputed.
  struct Span {
    int begin, end;
    std::uint8_t value;  // 0 or 255
  };
  std::vector<Span> uniform;
  std::vector<Straddle> straddling;
  std::vector<std::uint8_t> any(static_cast<std::size_t>(w)), all(static_cast<std::size_t>(w));
  auto add_uniform = [&uniform](int begin, int end, std::uint8_t value) {
    if (!uniform.empty() && uniform.back().value == value && uniform.back().end == begin)
      uniform.back().end = end;
    else
      uniform.push_back({begin, end, value});
  };

  int pair_top = -1, pair_bottom = -1;
  for (int y = 0; y < frame_height; ++y) {
    const Tap& ty = rows[static_cast<std::size_t>(y)];
    std::uint8_t* dst = out + static_cast<std::size_t>(y) * frame_width;
    if (ty.lo == pair_top && ty.hi == pair_bottom) {
      std::memcpy(dst, dst - frame_width, static_cast<std::size_t>(frame_width));
    } else {
      pair_top = ty.lo;
      pair_bottom = ty.hi;
      uniform.clear();
      straddling.clear();
      const std::uint8_t k0 = mask.row_kind[static_cast<std::size_t>(ty.lo)];
      const std::uint8_t k1 = mask.row_kind[static_cast<std::size_t>(ty.hi)];
      if (k0 == k1 && k0 != kSome) {
        add_uniform(0, frame_width, k0 == kAll ? 255 : 0);
      } else {
        const std::uint8_t* a0 = mask.above.data() + static_cast<std::size_t>(ty.lo) * w;
        const std::uint8_t* a1 = mask.above.data() + static_cast<std::size_t>(ty.hi) * w;
        const float* top = map_row(ty.lo);
        const float* bottom = map_row(ty.hi);
        for (int c = 0; c < w; ++c) {
          any[static_cast<std::size_t>(c)] = a0[c] | a1[c];
          all[static_cast<std::size_t>(c)] = a0[c] & a1[c];
        }
        for (int i = 0; i < segment_count;) {
          const Segment& s = segments[static_cast<std::size_t>(i)];
          const bool some =
              any[static_cast<std::size_t>(s.lo)] | any[static_cast<std::size_t>(s.hi)];
          const bool every =
              all[static_cast<std::size_t>(s.lo)] & all[static_cast<std::size_t>(s.hi)];
          if (some && !every) {
            straddling.push_back(
                {s.begin, s.end, top[s.lo], bottom[s.lo], top[s.hi], bottom[s.hi]});
            ++i;
            continue;
          }
          // A uniform stretch lasts until the next source column that breaks it.
          const int stop = some ? next_with(all.data(), s.hi, w, false)
                                : next_with(any.data(), s.hi, w, true);
          const int j = std::max(i + 1, first_segment[static_cast<std::size_t>(stop)]);
          add_uniform(s.begin, segments[static_cast<std::size_t>(j - 1)].end, some ? 255 : 0);
          i = j;
        }
      }
      for (const Span& s : uniform) kernels::fill(dst + s.begin, s.end - s.begin, s.value);
    }

    k.render_straddles(straddling.data(), straddling.size(), 1.0f - ty.frac, ty.frac,
                       wx0.data(), wx1.data(), threshold, dst);
  }
}

// Marks the frame pixels covered by map pixel `peak` when `mask` is all zeros.
void paint_peak_if_empty(std::uint8_t* mask, int frame_height, int frame_width,
                         const MapView& map, std::int64_t peak) {
  // kMaxSide squared fits in an int, the unit next_with counts in.
  const int size = frame_height * frame_width;
  if (next_with(mask, 0, size, true) < size) return;
  const int px = static_cast<int>(peak % map.width);
  const int py = static_cast<int>(peak / map.width);
  const int x1 = scale_floor(px, frame_width, map.width);
  const int x2 = std::max(x1 + 1, scale_ceil(px + 1, frame_width, map.width));
  const int y1 = scale_floor(py, frame_height, map.height);
  const int y2 = std::max(y1 + 1, scale_ceil(py + 1, frame_height, map.height));
  for (int y = y1; y < std::min(y2, frame_height); ++y)
    std::memset(mask + static_cast<std::size_t>(y) * frame_width + x1, 255,
                static_cast<std::size_t>(std::min(x2, frame_width) - x1));
}

}  // namespace

// ---- validation ----------------------------------------------------------------------------

void check_params(const Params& p) {
  if (!std::isfinite(p.image_threshold) || !std::isfinite(p.pixel_threshold))
    throw std::invalid_argument("thresholds must be finite numbers (got image_threshold=" +
                                std::to_string(p.image_threshold) + ", pixel_threshold=" +
                                std::to_string(p.pixel_threshold) + ")");
  if (std::fabs(p.image_threshold) > std::numeric_limits<float>::max() ||
      std::fabs(p.pixel_threshold) > std::numeric_limits<float>::max())
    throw std::invalid_argument("thresholds must fit in float32, the precision of the map");
  if (!(std::isfinite(p.image_scale) && p.image_scale > 0.0) ||
      !(std::isfinite(p.pixel_scale) && p.pixel_scale > 0.0))
    throw std::invalid_argument(
        "normalisation scales must be finite and > 0 (got image_scale=" +
        std::to_string(p.image_scale) + ", pixel_scale=" + std::to_string(p.pixel_scale) +
        "); a scale is max - min of the validation scores");
  if (p.min_area < 0)
    throw std::invalid_argument("min_area must be >= 0 (got " + std::to_string(p.min_area) +
                                ")");
}

void check_sizes(const MapView& map, int frame_height, int frame_width) {
  if (map.data == nullptr || map.height < 1 || map.width < 1 || map.height > kMaxSide ||
      map.width > kMaxSide)
    throw std::invalid_argument("anomaly map must be between 1x1 and " +
                                std::to_string(kMaxSide) + "x" + std::to_string(kMaxSide) +
                                " (got " + std::to_string(map.height) + "x" +
                                std::to_string(map.width) + ")");
  if (frame_height < 1 || frame_width < 1 || frame_height > kMaxSide || frame_width > kMaxSide)
    throw std::invalid_argument("frame size must be between 1x1 and " +
                                std::to_string(kMaxSide) + "x" + std::to_string(kMaxSide) +
                                " as (height, width) (got " + std::to_string(frame_height) +
                                "x" + std::to_string(frame_width) + ")");
}

// ---- the public pieces -----------------------------------------------------------------------

MapStats scan_map(const MapView& map, Isa isa) {
  const std::size_t n = static_cast<std::size_t>(map.height) * map.width;
  MapStats stats = checked_kernels(isa).scan(map.data, n);
  // Lanes meet in a different order in each ISA; adding +0 turns a -0 maximum into +0, so
  // that a map of zeros and negative zeros gives the same raw score everywhere.
  stats.max += 0.0f;
  return stats;
}

double normalise(double raw, double threshold, double scale) {
  return std::clamp((raw - threshold) / scale + 0.5, 0.0, 1.0);
}

std::vector<Region> find_regions(const MapView& map, int frame_height, int frame_width,
                                 const Params& params, Isa isa) {
  const kernels::Table& k = checked_kernels(isa);
  const Thresholded mask = threshold_map(map, static_cast<float>(params.pixel_threshold), k);
  const RegionRule every{-std::numeric_limits<float>::infinity(), params.image_threshold,
                         params.image_scale, params.min_area};
  return find_regions_in(map, mask, frame_height, frame_width, every);
}

void render_mask(const MapView& map, float threshold, std::uint8_t* out, int frame_height,
                 int frame_width, Isa isa) {
  const kernels::Table& k = checked_kernels(isa);
  render_mask_from(k, map, threshold_map(map, threshold, k), threshold, out, frame_height,
                   frame_width);
}

void render_heatmap(const MapView& map, double threshold, double scale, std::uint8_t* out,
                    int frame_height, int frame_width, Isa isa) {
  const kernels::Table& k = checked_kernels(isa);
  const int w = map.width;
  const std::vector<Tap> rows = linear_taps(map.height, frame_height, false);
  const double t = static_cast<float>(threshold);

  // Column taps as plain arrays (index and weight of each side) for the horizontal pass.
  std::vector<int> lo(static_cast<std::size_t>(frame_width)), hi(lo.size());
  std::vector<float> wx0(lo.size()), wx1(lo.size());
  {
    const std::vector<Tap> cols = linear_taps(w, frame_width, true);
    for (std::size_t x = 0; x < cols.size(); ++x) {
      lo[x] = cols[x].lo;
      hi[x] = cols[x].hi;
      wx1[x] = cols[x].frac;
      wx0[x] = 1.0f - cols[x].frac;
    }
  }

  // Separable bilinear: each needed source row is normalised and interpolated horizontally
  // once (x 255) into one of two cached frame-width rows; output rows blend the two.
  std::vector<float> normalised(static_cast<std::size_t>(w) + kPadding);  // padded for loads
  struct CachedRow {
    int source = -1;
    bool zero = false;  // every value is 0
    std::vector<float> values;
  };
  CachedRow cache[2];
  for (CachedRow& c : cache) c.values.resize(static_cast<std::size_t>(frame_width));
  // A source row whose every value lies under `scoring` normalises to zeros (of either sign,
  // which no later sum, weighted by weights >= 0 and offset by 0.5, tells apart), so it needs
  // neither the division nor the interpolation; and an output row between two such rows is
  // all zeros. On a normal frame's map that is every row (scores sit under the threshold).
  const float scoring = first_above_zero(
      [=](float raw) { return std::clamp((raw - t) / scale + 0.5, 0.0, 1.0); });
  auto fetch = [&](int source, int keep) -> const CachedRow& {
    for (const CachedRow& c : cache)
      if (c.source == source) return c;
    CachedRow& victim = cache[0].source != keep ? cache[0] : cache[1];
    const float* row = map.data + static_cast<std::size_t>(source) * w;
    victim.zero = run_max(row, 0, w) < scoring;
    if (victim.zero) {
      std::fill(victim.values.begin(), victim.values.end(), 0.0f);
    } else {
      k.normalise_row(row, w, t, scale, normalised.data());
      k.interpolate_row(normalised.data(), lo.data(), hi.data(), wx0.data(), wx1.data(),
                        victim.values.data(), frame_width);
    }
    victim.source = source;
    return victim;
  };

  for (int y = 0; y < frame_height; ++y) {
    const Tap& ty = rows[static_cast<std::size_t>(y)];
    const CachedRow& upper = fetch(ty.lo, ty.hi);
    const CachedRow& lower = fetch(ty.hi, ty.lo);
    std::uint8_t* dst = out + static_cast<std::size_t>(y) * frame_width;
    if (upper.zero && lower.zero)
      std::memset(dst, 0, static_cast<std::size_t>(frame_width));
    else
      k.blend_rows(upper.values.data(), lower.values.data(), 1.0f - ty.frac, ty.frac, dst,
                   frame_width);
  }
}

Result postprocess(const MapView& map, bool has_raw_score, double raw_score, int frame_height,
                   int frame_width, const Params& params, Task task, const Outputs& outputs,
                   Isa isa) {
  const kernels::Table& k = checked_kernels(isa);
  check_sizes(map, frame_height, frame_width);
  check_params(params);
  if (has_raw_score && !std::isfinite(raw_score))
    throw std::invalid_argument("raw_score must be a finite number (got " +
                                std::to_string(raw_score) + ")");
  const MapStats stats = scan_map(map, isa);
  if (!stats.finite)
    throw std::invalid_argument(
        "anomaly map contains NaN or infinite values: check the model output (an FP16 "
        "overflow?) before post-processing");

  Result result;
  result.raw_score = has_raw_score ? raw_score : static_cast<double>(stats.max);
  const float image_threshold = static_cast<float>(params.image_threshold);
  result.label = result.raw_score >= static_cast<double>(image_threshold);
  result.score = normalise(result.raw_score, image_threshold, params.image_scale);

  // The decision (postprocess.hpp): a Normal image has no region and an empty mask; an
  // Anomaly image has the regions seeded at the image threshold, grown down to the pixel
  // threshold, the peak's region always among them.
  const bool want_mask = task == Task::Segmentation && outputs.mask != nullptr;
  const bool has_regions = task != Task::Classification && result.label;
  if (want_mask && !has_regions)
    std::memset(outputs.mask, 0,
                static_cast<std::size_t>(frame_height) * static_cast<std::size_t>(frame_width));
  if (has_regions) {
    const std::size_t n = static_cast<std::size_t>(map.height) * map.width;
    // With a raw score from elsewhere the map may peak below the image threshold: the peak
    // then seeds the region on its own.
    const float seed = std::min(image_threshold, stats.max);
    // Outlines follow the pixel threshold; where it would leave nothing (the peak below
    // it), the region that flagged the image is shown at the seed level.
    const float pixel_threshold = static_cast<float>(params.pixel_threshold);
    const float extent = stats.max >= pixel_threshold ? pixel_threshold : seed;
    // The peak is at or above the extent, so it lies in a run and find_regions_in finds it.
    const RegionRule rule{seed,         params.image_threshold, params.image_scale,
                          params.min_area, true,                  stats.max};
    Thresholded above = threshold_map(map, extent, k);
    std::vector<DroppedRun> dropped;
    std::int64_t peak = -1;
    result.regions = find_regions_in(map, above, frame_height, frame_width, rule,
                                     want_mask ? &dropped : nullptr, &peak);
    if (peak < 0)  // cannot happen (see above); the plain search keeps the promise anyway
      peak = std::max_element(map.data, map.data + n) - map.data;
    if (want_mask) {
      if (dropped.empty()) {
        render_mask_from(k, map, above, extent, outputs.mask, frame_height, frame_width);
      } else {
        // Unreported components stay out of the mask: their pixels sink just below the
        // extent, in copies of the rows they touch (the rest of the map is read in place),
        // and leave the thresholded mask, whose other bytes stay as they are.
        const float below = std::nextafter(extent, -std::numeric_limits<float>::infinity());
        std::vector<const float*> rows(static_cast<std::size_t>(map.height));
        for (int y = 0; y < map.height; ++y)
          rows[static_cast<std::size_t>(y)] = map.data + static_cast<std::size_t>(y) * map.width;
        std::size_t touched = 0;  // dropped runs come in raster order: count distinct rows
        for (std::size_t i = 0; i < dropped.size(); ++i)
          touched += i == 0 || dropped[i].row != dropped[i - 1].row;
        std::vector<float> copies(touched * static_cast<std::size_t>(map.width));
        float* copy = nullptr;
        for (std::size_t i = 0; i < dropped.size(); ++i) {
          const DroppedRun& run = dropped[i];
          const std::size_t row = static_cast<std::size_t>(run.row);
          if (i == 0 || run.row != dropped[i - 1].row) {
            copy = copy == nullptr ? copies.data() : copy + map.width;
            std::copy(rows[row], rows[row] + map.width, copy);
            rows[row] = copy;
          }
          std::fill(copy + run.begin, copy + run.end, below);
          std::uint8_t* bits = above.above.data() + row * static_cast<std::size_t>(map.width);
          std::fill(bits + run.begin, bits + run.end, std::uint8_t{0});
          if (i + 1 == dropped.size() || dropped[i + 1].row != run.row)
            above.row_kind[row] = next_with(bits, 0, map.width, true) == map.width  ? kNone
                                  : next_with(bits, 0, map.width, false) == map.width ? kAll
                                                                                      : kSome;
        }
        render_mask_from(k, map, above, extent, outputs.mask, frame_height, frame_width,
                         rows.data());
      }
      // Bilinear upsampling can smooth a one-pixel peak below the threshold everywhere:
      // the peak's own frame pixels then stand for it, so a flagged image never shows an
      // empty mask.
      paint_peak_if_empty(outputs.mask, frame_height, frame_width, map, peak);
    }
  }
  if (outputs.heatmap != nullptr)
    render_heatmap(map, params.image_threshold, params.image_scale, outputs.heatmap,
                   frame_height, frame_width, isa);
  return result;
}

}  // namespace anomaly_edge
