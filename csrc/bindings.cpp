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
#include "losses.hpp"

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
void bind_kmeans(py::module_& m) {
  (void)m;
}
// (end of k-means section)
//
//
//

// ---------------------------------------------------------------------------------------------
// Section: fused relational losses. Owner: issue 5.
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
    m.def(
        "rkd_distance_loss",
        [require_shape, run](const Array& gs, const Array& gt, bool want_grad) {
          require_ndim(gs, 2, "gs");
          const py::ssize_t b = gs.shape(0);
          require_shape(gs, b, b, "gs");
          require_shape(gt, b, b, "gt");
          return run({b, b}, want_grad, [&](T* grad) {
            return ssondo::rkd_distance_loss<T>(gs.data(), gt.data(), b, grad);
          });
        },
        py::arg("gs").noconvert(), py::arg("gt").noconvert(), py::arg("want_grad"),
        "RKD distance loss from Grams gs, gt [B, B].");
    m.def(
        "pairwise_cosine_loss",
        [require_shape, run](const Array& gs, const Array& gt, bool want_grad) {
          require_ndim(gs, 2, "gs");
          const py::ssize_t b = gs.shape(0);
          require_shape(gs, b, b, "gs");
          require_shape(gt, b, b, "gt");
          return run({b, b}, want_grad, [&](T* grad) {
            return ssondo::pairwise_cosine_loss<T>(gs.data(), gt.data(), b, grad);
          });
        },
        py::arg("gs").noconvert(), py::arg("gt").noconvert(), py::arg("want_grad"),
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
