// The only file that includes pybind11: wraps the plain C++ core for Python.
//
// Conventions for every binding here:
// - arrays are taken as py::array_t<T, py::array::c_style> WITHOUT forcecast, and the Python
//   layer (pyssondo/*.py) converts dtype/layout explicitly before calling;
// - shapes and sizes are checked here, before any pointer is handed to the core;
// - the GIL is released only around the pure C++ call (py::gil_scoped_release in an inner
//   block), never while Python objects are created or destroyed;
// - std::invalid_argument from the core becomes ValueError (pybind11 does this by default);
//   other std::exception become RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "parallel.hpp"
#include "kmeans.hpp"

namespace py = pybind11;

namespace {

// Raises ValueError unless `a` has exactly `ndim` dimensions; `what` names the argument.
template <typename T>
void require_ndim(const py::array_t<T, py::array::c_style>& a, py::ssize_t ndim, const char* what) {
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(what) + " must be " + std::to_string(ndim) +
                          "-D, got " + std::to_string(a.ndim()) + "-D");
  }
}

// ---------------------------------------------------------------------------------------------
// Section: front end (FFT, STFT, log-mel, resampler, WAV reading). Owner: issue 2 / issue 8.
// ---------------------------------------------------------------------------------------------
void bind_frontend(py::module_& m) {
  (void)m;
}
// (end of front-end section)
//
//
//

// ---------------------------------------------------------------------------------------------
// Section: k-means and sampling. Owner: issue 4.
// ---------------------------------------------------------------------------------------------
namespace km = ssondo::kmeans;

km::Metric parse_metric(const std::string& metric) {
  if (metric == "euclidean") return km::Metric::euclidean;
  if (metric == "cosine") return km::Metric::cosine;
  throw py::value_error("metric must be 'euclidean' or 'cosine', got '" + metric + "'");
}

// Row view of a 2-D C-contiguous float32 or uint16 (= float16 bits) array.
template <typename T>
km::Rows rows_of(const py::array_t<T, py::array::c_style>& x, std::int64_t row_offset) {
  require_ndim(x, 2, "x");
  km::Rows r;
  r.data = x.data();
  r.dtype = std::is_same<T, float>::value ? km::DType::f32 : km::DType::f16;
  r.n = static_cast<std::size_t>(x.shape(0));
  r.d = static_cast<std::size_t>(x.shape(1));
  r.row_offset = row_offset;
  return r;
}

using F32 = py::array_t<float, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;
using I32 = py::array_t<std::int32_t, py::array::c_style>;
using I64 = py::array_t<std::int64_t, py::array::c_style>;

template <typename T>
void def_kmeans_typed(py::module_& m) {
  m.def(
      "kmeans_assign",
      [](const py::array_t<T, py::array::c_style>& x, const F32& centroids,
         const std::string& metric, std::optional<I32> labels, std::optional<F32> dist,
         std::optional<F64> sums, std::optional<I64> counts, std::int64_t row_offset) {
        const km::Rows r = rows_of(x, row_offset);
        const km::Metric mt = parse_metric(metric);
        require_ndim(centroids, 2, "centroids");
        if (static_cast<std::size_t>(centroids.shape(1)) != r.d) {
          throw py::value_error("centroids have " + std::to_string(centroids.shape(1)) +
                                " dims but x has " + std::to_string(r.d));
        }
        const std::size_t k = static_cast<std::size_t>(centroids.shape(0));
        auto check_len = [](py::ssize_t got, std::size_t want, const char* what) {
          if (static_cast<std::size_t>(got) != want) {
            throw py::value_error(std::string(what) + " must have " + std::to_string(want) +
                                  " elements, got " + std::to_string(got));
          }
        };
        std::int32_t* lp = nullptr;
        float* dp = nullptr;
        double* sp = nullptr;
        std::int64_t* cp = nullptr;
        if (labels) {
          check_len(labels->size(), r.n, "labels");
          lp = labels->mutable_data();
        }
        if (dist) {
          check_len(dist->size(), r.n, "dist");
          dp = dist->mutable_data();
        }
        if (sums) {
          check_len(sums->size(), k * r.d, "sums");
          sp = sums->mutable_data();
        }
        if (counts) {
          check_len(counts->size(), k, "counts");
          cp = counts->mutable_data();
        }
        {
          py::gil_scoped_release release;
          km::assign(r, centroids.data(), k, mt, lp, dp, sp, cp);
        }
      },
      py::arg("x"), py::arg("centroids"), py::arg("metric"), py::arg("labels") = py::none(),
      py::arg("dist") = py::none(), py::arg("sums") = py::none(),
      py::arg("counts") = py::none(), py::arg("row_offset") = 0,
      "Nearest centroid of each row of x [n, d] (float32, or float16 passed as a uint16 view).\n"
      "Writes into the optional outputs labels int32 [n], dist float32 [n] (squared Euclidean\n"
      "or 1 - cos), and adds into sums float64 [k, d] and counts int64 [k]. row_offset is\n"
      "added to row numbers in error messages.");
  m.def(
      "kmeans_prepare",
      [](const py::array_t<T, py::array::c_style>& x, const std::string& metric,
         std::optional<I64> row_ids) {
        km::Rows r = rows_of(x, 0);
        const km::Metric mt = parse_metric(metric);
        if (row_ids) {
          if (static_cast<std::size_t>(row_ids->size()) != r.n) {
            throw py::value_error("row_ids must have one entry per row of x");
          }
          r.row_ids = row_ids->data();
        }
        F32 out({static_cast<py::ssize_t>(r.n), static_cast<py::ssize_t>(r.d)});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          km::prepare_rows(r, mt, op);
        }
        return out;
      },
      py::arg("x"), py::arg("metric"), py::arg("row_ids") = py::none(),
      "Rows of x as a new float32 [n, d] array, validated, unit-normalised for 'cosine'.\n"
      "row_ids int64 [n] names the rows in error messages.");
}

void bind_kmeans(py::module_& m) {
  def_kmeans_typed<float>(m);
  def_kmeans_typed<std::uint16_t>(m);
  m.def(
      "kmeans_plusplus",
      [](const F32& x, std::size_t k, int n_trials, std::uint64_t seed) {
        require_ndim(x, 2, "x");
        const std::size_t n = static_cast<std::size_t>(x.shape(0));
        const std::size_t d = static_cast<std::size_t>(x.shape(1));
        I64 chosen(static_cast<py::ssize_t>(k));
        std::int64_t* cp = chosen.mutable_data();
        {
          py::gil_scoped_release release;
          km::kmeanspp(x.data(), n, d, k, n_trials, seed, cp);
        }
        return chosen;
      },
      py::arg("x"), py::arg("k"), py::arg("n_trials") = 0, py::arg("seed") = 0,
      "Greedy k-means++ seeding on float32 rows x [n, d] (squared Euclidean; normalise rows\n"
      "first for cosine). Returns int64 [k] row indices. n_trials <= 0: 2 + ln(k), rounded up\n"
      "to a multiple of 6.");
  m.def(
      "kmeans_update",
      [](F32& centroids, F64& weights, const F64& sums, const I64& counts,
         const std::string& metric, bool lloyd) {
        require_ndim(centroids, 2, "centroids");
        const std::size_t k = static_cast<std::size_t>(centroids.shape(0));
        const std::size_t d = static_cast<std::size_t>(centroids.shape(1));
        if (static_cast<std::size_t>(weights.size()) != k ||
            static_cast<std::size_t>(counts.size()) != k ||
            static_cast<std::size_t>(sums.size()) != k * d) {
          throw py::value_error("kmeans_update: weights/counts need k = " + std::to_string(k) +
                                " entries and sums k x d = " + std::to_string(k * d));
        }
        const km::Metric mt = parse_metric(metric);
        float* cp = centroids.mutable_data();
        double* wp = weights.mutable_data();
        std::size_t empty;
        {
          py::gil_scoped_release release;
          empty = km::update_centroids(cp, wp, sums.data(), counts.data(), k, d, mt, lloyd);
        }
        return empty;
      },
      py::arg("centroids"), py::arg("weights"), py::arg("sums"), py::arg("counts"),
      py::arg("metric"), py::arg("lloyd"),
      "In-place centroid update from accumulated sums/counts: Lloyd (mean) or mini-batch\n"
      "(per-centroid rate counts / (weights + counts); weights += counts). Returns the number\n"
      "of empty clusters (left unchanged).");
}
// (end of k-means section)
//
//
//

// ---------------------------------------------------------------------------------------------
// Section: fused relational losses. Owner: issue 5.
// ---------------------------------------------------------------------------------------------
void bind_losses(py::module_& m) {
  (void)m;
}
// (end of losses section)
//
//
//

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ssondo C++ core: front end, resampler, k-means, fused relational losses";
#ifdef SSONDO_VERSION
  m.attr("__version__") = SSONDO_VERSION;
#endif
  m.def("get_num_threads", &ssondo::get_num_threads, "Threads the C++ core uses (>= 1).");
  m.def("set_num_threads", &ssondo::set_num_threads, py::arg("n"),
        "Sets the C++ core's thread count; n <= 0 restores the default (all cores).");
  m.def(
      "build_info",
      []() {
        py::dict d;
        d["compiler"] =
#if defined(__clang__)
            std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
            std::string("gcc ") + __VERSION__;
#else
            std::string("unknown");
#endif
        d["cxx_standard"] = static_cast<long>(__cplusplus);
#ifdef NDEBUG
        d["build_type"] = "release";
#else
        d["build_type"] = "debug";
#endif
        d["threads"] = ssondo::get_num_threads();
        return d;
      },
      "Compiler, C++ standard, build type and thread count of the compiled core.");
  bind_frontend(m);
  bind_kmeans(m);
  bind_losses(m);
}
