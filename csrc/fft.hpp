// Our own FFT: complex and real DFTs of any size, transforming kFftLanes signals at once.
//
// Layout ("lanes"): element j of signal l lives at index j * kFftLanes + l, with real and
// imaginary parts in separate arrays. Every butterfly then works on kFftLanes contiguous
// floats, which the compiler vectorises without shuffles; the log-mel front end feeds
// kFftLanes consecutive frames through one transform.
//
// Sizes: products of 2, 3, 5 and 7 use Stockham autosort stages (radix 4, then direct odd
// radices 3, 5, 7, then at most one radix 2); sizes with a larger prime factor use Bluestein's
// algorithm on a power-of-two transform. The stage kernels are compiled for AVX2 and for the
// baseline, chosen at load time (vec8.hpp). Plans are immutable after construction and may be
// shared by threads; every call takes its scratch memory from the caller, so nothing is
// allocated per transform.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace ssondo {

constexpr std::size_t kFftLanes = 8;
// Largest transform size a plan accepts (larger sizes throw std::invalid_argument).
constexpr std::size_t kMaxFftSize = std::size_t(1) << 20;

// Forward complex DFT X[k] = sum_j x[j] exp(-2 pi i j k / n), n >= 1, on kFftLanes signals.
class ComplexFFT {
 public:
  explicit ComplexFFT(std::size_t n);
  ~ComplexFFT();
  ComplexFFT(const ComplexFFT&) = delete;
  ComplexFFT& operator=(const ComplexFFT&) = delete;

  std::size_t size() const { return n_; }
  // Floats of scratch memory forward() needs.
  std::size_t workspace_floats() const;
  // Transforms re/im (n * kFftLanes floats each) in place; work holds workspace_floats().
  void forward(float* re, float* im, float* work) const;
  // The same without the final copy: the result is left in (re, im) or in work, and the
  // returned pointers say where (the input is destroyed either way).
  struct Split {
    const float* re;
    const float* im;
  };
  Split transform(float* re, float* im, float* work) const;

 private:
  std::size_t n_;
  // Sizes with factors 2, 3, 5, 7 only: Stockham stages of these radices and their twiddles.
  std::vector<int> radices_;
  std::vector<float> twiddles_;
  // Bluestein: chirp c[j] = exp(-i pi j^2 / n) and the spectrum of conj(c), scaled by 1/m.
  std::size_t m_ = 0;
  std::vector<float> chirp_re_, chirp_im_, kernel_re_, kernel_im_;
  std::unique_ptr<ComplexFFT> inner_;
};

// Forward real DFT of size n >= 1: bins X[0 .. n/2] of kFftLanes real signals.
// Even n runs one complex transform of size n/2 on the packed even/odd samples.
class RealFFT {
 public:
  explicit RealFFT(std::size_t n);

  std::size_t size() const { return n_; }
  std::size_t bins() const { return n_ / 2 + 1; }
  std::size_t workspace_floats() const;
  // x: n * kFftLanes floats (lane layout). out_re/out_im: bins() * kFftLanes floats each.
  void forward(const float* x, float* out_re, float* out_im, float* work) const;
  // forward() for even n with the samples already split by the caller: even and odd hold
  // samples 2j and 2j + 1 of x (n/2 * kFftLanes floats each, lane layout) and are destroyed.
  void forward_split(float* even, float* odd, float* out_re, float* out_im, float* work) const;

 private:
  std::size_t n_;
  ComplexFFT inner_;              // size n/2 (even n) or n (odd n)
  std::vector<float> post_re_, post_im_;  // exp(-2 pi i k / n), k in [0, n/2] (even n)
};

}  // namespace ssondo
