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
