// anomaly_edge._post: the Python face of the post-processor. This file only checks and
// converts arguments, allocates the output arrays, and releases the GIL around the C++ work;
// the algorithms live in postprocess.cpp. Users call anomaly_edge.postprocess instead.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional arguments

#include <atomic>
#include <cstdint>
#include <iterator>  // std::size
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "box_downsample.hpp"
#include "cpu_dispatch.hpp"
#include "postprocess.hpp"
#include "stitch.hpp"

namespace py = pybind11;
namespace ae = anomaly_edge;

namespace {

// ---- instruction set ------------------------------------------------------------------------

// The override itself lives in the library (ae::set_isa_override), where C++ callers reach it.
void set_isa(const std::optional<std::string>& name) {
  if (!name) return ae::clear_isa_override();
  const ae::Isa isa = ae::parse_isa(*name);  // std::invalid_argument -> ValueError
  ae::set_isa_override(isa);
}

py::dict cpu_features() {
  const ae::CpuFeatures f = ae::cpu_features();
  py::dict d;
  d["sse2"] = f.sse2;
  d["avx2"] = f.avx2;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  return d;
}

py::list supported_isas() {
  py::list names;
  for (ae::Isa isa : ae::supported_isas()) names.append(ae::isa_name(isa));
  return names;
}

// ---- arguments ------------------------------------------------------------------------------

std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A float32, C-contiguous, aligned array of `ndim` dimensions with no empty axis, copied only
// when the layout demands it. TypeError for a wrong type or dtype, ValueError for a wrong shape.
py::array_t<float> as_float_map(const py::object& obj, const char* name, py::ssize_t ndim,
                                const char* axes) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of float32, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + " must have dtype float32 (native byte order), got " +
                         std::string(py::str(arr.dtype())) + ": convert it with " + name +
                         ".astype(numpy.float32)");
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D " + axes +
                          ", got shape " + shape_text(arr));
  for (py::ssize_t i = 0; i < ndim; ++i)
    if (arr.shape(i) == 0)
      throw py::value_error(std::string(name) + " is empty (shape " + shape_text(arr) + ")");
  const bool contiguous = (arr.flags() & py::array::c_style) != 0;
  const bool aligned = reinterpret_cast<std::uintptr_t>(arr.data()) % alignof(float) == 0;
  if (contiguous && aligned) return py::reinterpret_borrow<py::array_t<float>>(arr);
  // A strided view or a misaligned buffer: one aligned C-order copy.
  py::object copy = py::module_::import("numpy").attr("array")(
      arr, py::arg("dtype") = py::dtype::of<float>(), py::arg("order") = "C",
      py::arg("copy") = true);
  return py::reinterpret_borrow<py::array_t<float>>(copy);
}

int side(long long value, const char* what) {
  if (value < 1 || value > ae::kMaxSide)
    throw py::value_error(std::string(what) + " must be between 1 and " +
                          std::to_string(ae::kMaxSide) + " pixels, got " + std::to_string(value));
  return static_cast<int>(value);
}

ae::MapView view_of(const py::array_t<float>& map, py::ssize_t offset_items, int h, int w) {
  return ae::MapView{map.data() + offset_items, h, w};
}

py::array_t<std::uint8_t> new_image(int height, int width) {
  return py::array_t<std::uint8_t>({static_cast<py::ssize_t>(height),
                                    static_cast<py::ssize_t>(width)});
}

// The pre-processing step of resize_for_network: mean of whole block_h x block_w blocks.
// Takes H x W or H x W x C uint8 arrays whose pixels are contiguous (a crop of a frame is fine:
// only the row stride may be wider). Anything else gets a TypeError / ValueError that says why.
py::array box_downsample(const py::object& obj, long long block_h, long long block_w) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("image must be a numpy.ndarray of uint8, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().equal(py::dtype::of<std::uint8_t>()))
    throw py::type_error("image must have dtype uint8, got " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 2 && arr.ndim() != 3)
    throw py::value_error("image must be H x W or H x W x C, got shape " + shape_text(arr));
  const py::ssize_t channels = arr.ndim() == 3 ? arr.shape(2) : 1;
  if (channels < 1 || channels > 4)
    throw py::value_error("image must have 1 to 4 channels, got shape " + shape_text(arr));
  const int height = side(arr.shape(0), "image height");
  const int width = side(arr.shape(1), "image width");
  if (block_h < 1 || block_w < 1 || block_h > height || block_w > width ||
      block_h * block_w > 65535)
    throw py::value_error("blocks must be at least 1 x 1, fit in the " +
                          std::to_string(height) + " x " + std::to_string(width) +
                          " image and hold at most 65535 pixels, got " +
                          std::to_string(block_h) + " x " + std::to_string(block_w));
  const bool pixels_contiguous =
      (arr.ndim() == 2 || arr.strides(2) == 1) && arr.strides(1) == channels;
  if (!pixels_contiguous || arr.strides(0) < width * channels) {
    // a view with gaps between pixels, or reversed axes: one compact copy
    arr = py::module_::import("numpy").attr("ascontiguousarray")(arr);
  }
  const ae::ImageView view{static_cast<const std::uint8_t*>(arr.data()), height, width,
                           static_cast<int>(channels), arr.strides(0)};
  const int bh = static_cast<int>(block_h), bw = static_cast<int>(block_w);
  std::vector<py::ssize_t> shape{height / bh, width / bw};
  if (arr.ndim() == 3) shape.push_back(channels);
  py::array_t<std::uint8_t> out(shape);
  std::uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    ae::box_downsample(view, bh, bw, dst);
  }
  return out;
}

// (score, label, raw_score, boxes, mask | None, heatmap | None); boxes are tuples
// (x1, y1, x2, y2, score, mean_score, area) in frame pixels, x2/y2 exclusive.
py::tuple to_python(const ae::Result& r, const std::optional<py::array_t<std::uint8_t>>& mask,
                    const std::optional<py::array_t<std::uint8_t>>& heatmap) {
  py::list boxes(r.regions.size());
  for (std::size_t i = 0; i < r.regions.size(); ++i) {
    const ae::Region& g = r.regions[i];
    boxes[i] = py::make_tuple(g.x1, g.y1, g.x2, g.y2, g.score, g.mean_score, g.area);
  }
  py::object m = mask ? py::object(*mask) : py::object(py::none());
  py::object hm = heatmap ? py::object(*heatmap) : py::object(py::none());
  return py::make_tuple(r.score, r.label, r.raw_score, boxes, m, hm);
}

py::tuple postprocess_one(const py::object& anomaly_map, long long frame_height,
                          long long frame_width, const ae::Params& params, ae::Task task,
                          bool heatmap, std::optional<double> raw_score) {
  const py::array_t<float> map = as_float_map(anomaly_map, "anomaly_map", 2, "(height, width)");
  const int h = side(map.shape(0), "anomaly_map height");
  const int w = side(map.shape(1), "anomaly_map width");
  const int fh = side(frame_height, "frame height");
  const int fw = side(frame_width, "frame width");

  std::optional<py::array_t<std::uint8_t>> mask, heat;
  if (task == ae::Task::Segmentation) mask = new_image(fh, fw);
  if (heatmap) heat = new_image(fh, fw);
  const ae::Outputs outputs{mask ? mask->mutable_data() : nullptr,
                            heat ? heat->mutable_data() : nullptr};
  const ae::MapView view = view_of(map, 0, h, w);

  ae::Result result;
  {
    py::gil_scoped_release release;  // std::invalid_argument reaches Python as ValueError
    result = ae::postprocess(view, raw_score.has_value(), raw_score.value_or(0.0), fh, fw,
                             params, task, outputs);
  }
  return to_python(result, mask, heat);
}

std::vector<std::pair<int, int>> parse_frame_sizes(const py::object& obj, py::ssize_t n) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error("frame_sizes must be a list of (height, width) pairs");
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  if (static_cast<py::ssize_t>(seq.size()) != n)
    throw py::value_error("frame_sizes has " + std::to_string(seq.size()) + " entries for " +
                          std::to_string(n) + " anomaly maps: give one (height, width) per map");
  std::vector<std::pair<int, int>> sizes;
  sizes.reserve(static_cast<std::size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    const py::object item = seq[static_cast<std::size_t>(i)];
    const std::string where = "frame_sizes[" + std::to_string(i) + "]";
    if (!py::isinstance<py::sequence>(item) || py::len(item) != 2)
      throw py::type_error(where + " must be a (height, width) pair of ints");
    const py::sequence pair = py::reinterpret_borrow<py::sequence>(item);
    long long hw[2];
    for (int k = 0; k < 2; ++k) {
      const py::object v = pair[static_cast<std::size_t>(k)];
      if (py::isinstance<py::bool_>(v) || !py::hasattr(v, "__index__"))
        throw py::type_error(where + " must be a (height, width) pair of ints");
      try {
        hw[k] = py::cast<long long>(v.attr("__index__")());
      } catch (const py::cast_error&) {
        throw py::value_error(where + " is out of range");
      }
    }
    sizes.emplace_back(side(hw[0], (where + " height").c_str()),
                       side(hw[1], (where + " width").c_str()));
  }
  return sizes;
}

py::list postprocess_many(const py::object& anomaly_maps, const py::object& frame_sizes,
                          const ae::Params& params, ae::Task task, bool heatmap) {
  const py::array_t<float> maps =
      as_float_map(anomaly_maps, "anomaly_maps", 3, "(batch, height, width)");
  const py::ssize_t n = maps.shape(0);
  const int h = side(maps.shape(1), "anomaly_maps height");
  const int w = side(maps.shape(2), "anomaly_maps width");
  const std::vector<std::pair<int, int>> sizes = parse_frame_sizes(frame_sizes, n);

  std::vector<std::optional<py::array_t<std::uint8_t>>> masks(static_cast<std::size_t>(n));
  std::vector<std::optional<py::array_t<std::uint8_t>>> heats(static_cast<std::size_t>(n));
  std::vector<ae::Outputs> outputs(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
    if (task == ae::Task::Segmentation) masks[i] = new_image(sizes[i].first, sizes[i].second);
    if (heatmap) heats[i] = new_image(sizes[i].first, sizes[i].second);
    outputs[i] = {masks[i] ? masks[i]->mutable_data() : nullptr,
                  heats[i] ? heats[i]->mutable_data() : nullptr};
  }

  std::vector<ae::Result> results(static_cast<std::size_t>(n));
  const ae::Isa isa = ae::active_isa();
  std::size_t i = 0;
  try {
    py::gil_scoped_release release;
    for (; i < static_cast<std::size_t>(n); ++i) {
      const ae::MapView view = view_of(maps, static_cast<py::ssize_t>(i) * h * w, h, w);
      results[i] = ae::postprocess(view, false, 0.0, sizes[i].first, sizes[i].second, params,
                                   task, outputs[i], isa);
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error("anomaly_maps[" + std::to_string(i) + "]: " + e.what());
  }
  py::list out(static_cast<std::size_t>(n));
  for (std::size_t k = 0; k < static_cast<std::size_t>(n); ++k)
    out[k] = to_python(results[k], masks[k], heats[k]);
  return out;
}

// ---- tiles ----------------------------------------------------------------------------------

std::vector<int> parse_starts(const py::object& obj, const char* name) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error(std::string(name) + " must be a list of ints (tile start offsets)");
  std::vector<int> starts;
  for (const py::handle item : py::reinterpret_borrow<py::sequence>(obj)) {
    if (py::isinstance<py::bool_>(item) || !py::hasattr(item, "__index__"))
      throw py::type_error(std::string(name) + " must be a list of ints (tile start offsets)");
    const long long value = py::cast<long long>(item.attr("__index__")());
    if (value < 0 || value > ae::kMaxSide)
      throw py::value_error(std::string(name) + " holds " + std::to_string(value) +
                            ", outside 0.." + std::to_string(ae::kMaxSide));
    starts.push_back(static_cast<int>(value));
  }
  return starts;
}

ae::Blend parse_blend(const std::string& blend) {
  if (blend == "cosine") return ae::Blend::Cosine;
  if (blend == "average") return ae::Blend::Average;
  throw py::value_error("unknown blend '" + blend + "': choose cosine or average");
}

// (rows * cols, h, w) tile maps -> one (frame_height, frame_width) map.
py::array_t<float> stitch(const py::object& tile_maps, const py::object& ys_obj,
                          const py::object& xs_obj, long long frame_height, long long frame_width,
                          const std::string& blend_name) {
  const ae::Blend blend = parse_blend(blend_name);
  const py::array_t<float> maps = as_float_map(tile_maps, "tile_maps", 3, "(tiles, height, width)");
  const std::vector<int> ys = parse_starts(ys_obj, "ys");
  const std::vector<int> xs = parse_starts(xs_obj, "xs");
  const int th = side(maps.shape(1), "tile_maps height");
  const int tw = side(maps.shape(2), "tile_maps width");
  const int fh = side(frame_height, "frame height");
  const int fw = side(frame_width, "frame width");
  if (static_cast<py::ssize_t>(ys.size() * xs.size()) != maps.shape(0))
    throw py::value_error("tile_maps holds " + std::to_string(maps.shape(0)) + " maps for a " +
                          std::to_string(ys.size()) + " x " + std::to_string(xs.size()) +
                          " grid of tiles: give one map per tile, row by row");
  py::array_t<float> out({static_cast<py::ssize_t>(fh), static_cast<py::ssize_t>(fw)});
  float* dst = out.mutable_data();
  try {
    py::gil_scoped_release release;
    ae::stitch_tiles(maps.data(), th, tw, ys, xs, fh, fw, blend, dst);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_post, m) {
  m.doc() =
      "The anomaly-edge post-processor (C++). Use anomaly_edge.postprocess, which wraps it "
      "and returns Prediction objects.";
  m.attr("MAX_SIDE") = ae::kMaxSide;

  // A bad ANOMALY_EDGE_ISA fails the import (pybind11 raises ImportError with this message)
  // rather than the first frame, long after start-up.
  ae::default_isa();
  py::tuple isas(std::size(ae::kIsas));
  for (std::size_t i = 0; i < std::size(ae::kIsas); ++i) isas[i] = ae::isa_name(ae::kIsas[i]);
  m.attr("ISAS") = isas;
  m.def("cpu_features", &cpu_features,
        "The CPU features the post-processor's kernels can use, as {name: bool} (the OS must "
        "also enable the AVX / AVX-512 registers for a feature to count).");
  m.def("supported_isas", &supported_isas,
        "The instruction sets this build can run on this CPU, slowest first: 'baseline' and "
        "then 'avx2' and 'avx512' where available.");
  m.def(
      "active_isa", [] { return std::string(ae::isa_name(ae::active_isa())); },
      "The instruction set the post-processor uses now: set_isa's choice, else "
      "$ANOMALY_EDGE_ISA (read once, at import), else the fastest supported one.");
  m.def("set_isa", &set_isa, py::arg("isa"),
        "For tests and benchmarks: run the post-processor with instruction set `isa` "
        "('baseline', 'avx2' or 'avx512') in every thread from now on; None restores the "
        "default. ValueError for an unknown name or one this CPU cannot run. Results are "
        "bit-identical with every ISA; only the speed differs.");
  py::enum_<ae::Task>(m, "Task", "What post-processing produces: score and label "
                                "(classification), + boxes (detection), + mask (segmentation).")
      .value("classification", ae::Task::Classification)
      .value("detection", ae::Task::Detection)
      .value("segmentation", ae::Task::Segmentation);

  // Constructed only through check_params: an instance that exists is valid, so the values are
  // validated in one place (the library) and read-only afterwards.
  py::class_<ae::Params>(m, "Params",
                         "Thresholds and normalisation statistics in raw anomaly-map units; "
                         "ValueError unless thresholds are finite float32 values, scales finite "
                         "and > 0, min_area >= 0.")
      .def(py::init([](double image_threshold, double pixel_threshold, double image_scale,
                       double pixel_scale, std::int64_t min_area) {
             const ae::Params p{image_threshold, pixel_threshold, image_scale, pixel_scale,
                                min_area};
             ae::check_params(p);
             return p;
           }),
           py::arg("image_threshold"), py::arg("pixel_threshold"), py::arg("image_scale"),
           py::arg("pixel_scale"), py::arg("min_area") = 1)
      .def_readonly("image_threshold", &ae::Params::image_threshold)
      .def_readonly("pixel_threshold", &ae::Params::pixel_threshold)
      .def_readonly("image_scale", &ae::Params::image_scale)
      .def_readonly("pixel_scale", &ae::Params::pixel_scale)
      .def_readonly("min_area", &ae::Params::min_area)
      .def("__repr__", [](const ae::Params& p) {
        return "Params(image_threshold=" + std::to_string(p.image_threshold) +
               ", pixel_threshold=" + std::to_string(p.pixel_threshold) +
               ", image_scale=" + std::to_string(p.image_scale) +
               ", pixel_scale=" + std::to_string(p.pixel_scale) +
               ", min_area=" + std::to_string(p.min_area) + ")";
      });

  m.def("postprocess", &postprocess_one, py::arg("anomaly_map"), py::arg("frame_height"),
        py::arg("frame_width"), py::arg("params"), py::arg("task") = ae::Task::Segmentation,
        py::arg("heatmap") = false, py::arg("raw_score") = py::none(),
        "Post-process one float32 (h, w) map. Returns (score, label, raw_score, boxes, mask, "
        "heatmap); boxes are (x1, y1, x2, y2, score, mean_score, area) tuples, highest score "
        "first. The GIL is released while computing.");
  m.def("box_downsample", &box_downsample, py::arg("image"), py::arg("block_h"),
        py::arg("block_w"),
        "Shrink a uint8 H x W (x C) image by whole blocks: each output pixel is the mean of "
        "one block_h x block_w block, rounded to nearest (ties to even); edge rows and columns that do not fill "
        "a block are left out. The GIL is released while computing.");
  m.def("stitch", &stitch, py::arg("tile_maps"), py::arg("ys"), py::arg("xs"),
        py::arg("frame_height"), py::arg("frame_width"), py::arg("blend") = "cosine",
        "Blend float32 tile maps (rows * cols, h, w), tile (r, c) at index r * cols + c and "
        "placed at (ys[r], xs[c]), into one (frame_height, frame_width) map. Overlaps are "
        "blended with weights that fall smoothly (raised cosine) to the tile edge across each "
        "overlap ('cosine'), or averaged ('average'). The GIL is released while computing.");
  m.def("postprocess_batch", &postprocess_many, py::arg("anomaly_maps"), py::arg("frame_sizes"),
        py::arg("params"), py::arg("task") = ae::Task::Segmentation, py::arg("heatmap") = false,
        "Post-process N float32 maps (N, h, w), one (height, width) per map in frame_sizes. "
        "Returns a list of the tuples postprocess returns.");
}
