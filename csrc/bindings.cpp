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
#include "fft.hpp"
#include "losses.hpp"
#include "mel.hpp"
#include "resample.hpp"
#include "kmeans.hpp"
#include "wav.hpp"

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
// Section: front end (FFT, STFT, log-mel, resampler, WAV reading).
// ---------------------------------------------------------------------------------------------
using FloatArray = py::array_t<float, py::array::c_style>;

void bind_frontend(py::module_& m) {
  m.def(
      "rfft",
      [](const FloatArray& x) {
        require_ndim(x, 2, "x");
        const std::size_t rows = x.shape(0), n = x.shape(1), lanes = ssondo::kFftLanes;
        if (n < 1 || n > ssondo::kMaxFftSize) {
          throw py::value_error("rfft: length " + std::to_string(n) + " is outside [1, " +
                                std::to_string(ssondo::kMaxFftSize) + "]");
        }
        const ssondo::RealFFT plan(n);
        const std::size_t bins = plan.bins();
        py::array_t<std::complex<float>> out({rows, bins});
        const float* src = x.data();
        std::complex<float>* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          std::vector<float> in(n * lanes), re(bins * lanes), im(bins * lanes),
              work(plan.workspace_floats());
          for (std::size_t r0 = 0; r0 < rows; r0 += lanes) {
            const std::size_t count = std::min(lanes, rows - r0);
            std::fill(in.begin(), in.end(), 0.0f);
            for (std::size_t l = 0; l < count; ++l) {
              for (std::size_t j = 0; j < n; ++j) in[j * lanes + l] = src[(r0 + l) * n + j];
            }
            plan.forward(in.data(), re.data(), im.data(), work.data());
            for (std::size_t l = 0; l < count; ++l) {
              for (std::size_t k = 0; k < bins; ++k) {
                dst[(r0 + l) * bins + k] = {re[k * lanes + l], im[k * lanes + l]};
              }
            }
          }
        }
        return out;
      },
      py::arg("x").noconvert(),
      "Real FFT of each row with our own FFT (for tests): x float32 [B, n], n >= 1 -> "
      "complex64 [B, n//2+1], unnormalised, the same as numpy.fft.rfft.");

  py::class_<ssondo::LogMelPlan>(m, "LogMelPlan",
                                 "A log-mel front end with its FFT plan and sparse filterbank.")
      .def(py::init([](const FloatArray& window, const FloatArray& filterbank, long hop_length,
                       bool center, const std::string& pad_mode, int power, float log_offset) {
             require_ndim(window, 1, "window");
             require_ndim(filterbank, 2, "filterbank");
             const py::ssize_t n_fft = window.shape(0);
             if (n_fft < 1) throw py::value_error("window must hold n_fft >= 1 samples");
             if (filterbank.shape(1) != n_fft / 2 + 1) {
               throw py::value_error("filterbank must be [n_mels, n_fft//2+1] = [*, " +
                                     std::to_string(n_fft / 2 + 1) + "], got [" +
                                     std::to_string(filterbank.shape(0)) + ", " +
                                     std::to_string(filterbank.shape(1)) + "]");
             }
             return std::make_unique<ssondo::LogMelPlan>(
                 n_fft, hop_length, window.data(), filterbank.data(), filterbank.shape(0),
                 center, ssondo::parse_pad_mode(pad_mode), power, log_offset);
           }),
           py::arg("window").noconvert(), py::arg("filterbank").noconvert(),
           py::arg("hop_length"), py::arg("center"), py::arg("pad_mode"), py::arg("power"),
           py::arg("log_offset"),
           "window float32 [n_fft] (zero-padded), filterbank float32 [n_mels, n_fft//2+1], "
           "hop_length >= 1, center, pad_mode 'reflect'|'constant', power 1|2, log_offset > 0.")
      .def_property_readonly("n_fft", &ssondo::LogMelPlan::n_fft)
      .def_property_readonly("n_mels", &ssondo::LogMelPlan::n_mels)
      .def("num_frames", &ssondo::LogMelPlan::num_frames, py::arg("num_samples"),
           "Frames for a signal of num_samples >= 1 samples.")
      .def(
          "__call__",
          [](const ssondo::LogMelPlan& plan, const FloatArray& x) {
            require_ndim(x, 2, "x");
            const std::int64_t batch = x.shape(0), t = x.shape(1);
            if (t < 1) throw py::value_error("log_mel: x has 0 samples per row; need >= 1");
            const std::int64_t frames = plan.num_frames(t), mels = plan.n_mels();
            if (batch > 0 && mels * frames > (std::int64_t(1) << 40) / batch) {
              throw py::value_error("log_mel: output [" + std::to_string(batch) + ", " +
                                    std::to_string(mels) + ", " + std::to_string(frames) +
                                    "] is too large");
            }
            py::array_t<float> out({batch, mels, frames});
            const float* src = x.data();
            float* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              plan.compute(src, batch, t, dst);
            }
            return out;
          },
          py::arg("x").noconvert(),
          "x float32 [B, T], T >= 1 -> log-mel float32 [B, n_mels, frames]; threaded.");

  m.def(
      "resample",
      [](const FloatArray& x, long sr_in, long sr_out) {
        require_ndim(x, 2, "x");
        const ssondo::Resampler r(sr_in, sr_out);
        const std::int64_t batch = x.shape(0), t = x.shape(1), n_out = r.output_length(t);
        py::array_t<float> out({batch, n_out});
        const float* src = x.data();
        float* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          r.process(src, batch, t, dst);
        }
        return out;
      },
      py::arg("x").noconvert(), py::arg("sr_in"), py::arg("sr_out"),
      "Band-limited polyphase resampling of each row: x float32 [B, T] -> float32 "
      "[B, ceil(T * sr_out / sr_in)], no delay (resample_poly alignment), >= 80 dB stop band.");

  m.def(
      "read_wav",
      [](const std::string& path) {
        ssondo::WavAudio wav;
        {
          py::gil_scoped_release release;
          wav = ssondo::read_wav_file(path);
        }
        py::array_t<float> out({wav.channels, wav.frames});
        std::copy(wav.samples.begin(), wav.samples.end(), out.mutable_data());
        return py::make_tuple(out, wav.sample_rate);
      },
      py::arg("path"),
      "Strict RIFF/WAVE reader (PCM 8/16/24/32-bit, float 32/64, extensible, any channels): "
      "-> (float32 [C, T], sample_rate); ValueError naming the file and the problem.");
}
// (end of front-end section)
//
//
//

// ---------------------------------------------------------------------------------------------
// Section: k-means and sampling.
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
// Section: fused relational losses.
// ---------------------------------------------------------------------------------------------
void bind_losses(py::module_& m) {
  // Each kernel is bound for float32 and float64 (same name; the dtype picks the overload;
  // noconvert: arrays of another dtype or layout raise TypeError instead of being copied).
  // Arguments are the student's and the teacher's Gram matrices (plus the rows for RKD angle);
  // each returns (loss: float, S or None) with S = dL/dG_s + dL/dG_s^T, so dL/dX_s = S X_s.
  auto bind_dtype = [&m](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Array = py::array_t<T, py::array::c_style>;
    // Raises ValueError unless a is [rows, cols] (cols < 0: any).
    auto require_shape = [](const Array& a, py::ssize_t rows, py::ssize_t cols, const char* what) {
      require_ndim(a, 2, what);
      if (a.shape(0) != rows || (cols >= 0 && a.shape(1) != cols)) {
        throw py::value_error(std::string(what) + " must have shape [" + std::to_string(rows) +
                              ", " + (cols >= 0 ? std::to_string(cols) : std::string("D")) +
                              "], got [" + std::to_string(a.shape(0)) + ", " +
                              std::to_string(a.shape(1)) + "]");
      }
    };
    // Runs kernel(grad_ptr) without the GIL; returns (loss, grad array or None).
    auto run = [](const std::vector<py::ssize_t>& grad_shape, bool want_grad, auto kernel) {
      py::object grad = py::none();
      T* grad_ptr = nullptr;
      if (want_grad) {
        Array g(grad_shape);
        grad_ptr = g.mutable_data();
        grad = std::move(g);
      }
      double loss = 0.0;
      {
        py::gil_scoped_release release;
        loss = kernel(grad_ptr);
      }
      return py::make_tuple(loss, grad);
    };
    m.def(
        "rkd_angle_loss",
        [require_shape, run](const Array& gs, const Array& gt, const Array& xs, const Array& xt,
                             bool want_grad) {
          require_ndim(gs, 2, "gs");
          const py::ssize_t b = gs.shape(0);
          require_shape(gs, b, b, "gs");
          require_shape(gt, b, b, "gt");
          require_shape(xs, b, -1, "xs");
          require_shape(xt, b, -1, "xt");
          return run({b, b}, want_grad, [&](T* grad) {
            return ssondo::rkd_angle_loss<T>(gs.data(), gt.data(), xs.data(), xs.shape(1),
                                             xt.data(), xt.shape(1), b, grad);
          });
        },
        py::arg("gs").noconvert(), py::arg("gt").noconvert(), py::arg("xs").noconvert(),
        py::arg("xt").noconvert(), py::arg("want_grad"),
        "RKD angle loss from Grams gs, gt [B, B] and rows xs [B, Ds], xt [B, Dt].");
    // Losses that need only the two [B, B] Gram matrices.
    auto def_gram_pair = [&m, require_shape, run](const char* name, auto kernel, const char* doc) {
      m.def(
          name,
          [require_shape, run, kernel](const Array& gs, const Array& gt, bool want_grad) {
            require_ndim(gs, 2, "gs");
            const py::ssize_t b = gs.shape(0);
            require_shape(gs, b, b, "gs");
            require_shape(gt, b, b, "gt");
            return run({b, b}, want_grad,
                       [&](T* grad) { return kernel(gs.data(), gt.data(), b, grad); });
          },
          py::arg("gs").noconvert(), py::arg("gt").noconvert(), py::arg("want_grad"), doc);
    };
    def_gram_pair("rkd_distance_loss", &ssondo::rkd_distance_loss<T>,
                  "RKD distance loss from Grams gs, gt [B, B].");
    def_gram_pair("pairwise_cosine_loss", &ssondo::pairwise_cosine_loss<T>,
                  "Pairwise-cosine loss from Grams gs, gt [B, B].");
    m.def(
        "similarity_preserving_loss",
        [run](const Array& gs, const Array& gt, bool want_grad) {
          require_ndim(gs, 3, "gs");
          require_ndim(gt, 3, "gt");
          const py::ssize_t batch = gs.shape(0), n = gs.shape(1);
          if (gs.shape(2) != n || gt.shape(0) != batch || gt.shape(1) != n || gt.shape(2) != n) {
            throw py::value_error("gs and gt must both have shape [batch, n, n], got [" +
                                  std::to_string(gs.shape(0)) + ", " + std::to_string(n) + ", " +
                                  std::to_string(gs.shape(2)) + "] and [" +
                                  std::to_string(gt.shape(0)) + ", " +
                                  std::to_string(gt.shape(1)) + ", " +
                                  std::to_string(gt.shape(2)) + "]");
          }
          return run({batch, n, n}, want_grad, [&](T* grad) {
            return ssondo::similarity_preserving_loss<T>(gs.data(), gt.data(), batch, n, grad);
          });
        },
        py::arg("gs").noconvert(), py::arg("gt").noconvert(), py::arg("want_grad"),
        "Similarity-preserving loss from stacked Grams gs, gt [batch, n, n] (mean over batch).");
  };
  bind_dtype(static_cast<float*>(nullptr));
  bind_dtype(static_cast<double*>(nullptr));
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
