// Band-limited resampling between integer rates: a polyphase windowed-sinc (Kaiser) FIR.
//
// The ratio sr_out / sr_in is reduced to up / down by their gcd. Conceptually the signal is
// upsampled by `up` (zeros inserted), low-pass filtered by h and decimated by `down`:
//   y[n] = sum_j h[j] * xu[n * down + half_len - j],  xu[m] = x[m / up] if up divides m,
// with x zero outside [0, T). The filter is centred, so no delay is introduced (the same
// alignment as scipy.signal.resample_poly) and the output has ceil(T * up / down) samples.
//
// Filter design (Kaiser's formulas), in units of the lower of the two Nyquist rates:
// stop band from 1.0 at kStopbandDb attenuation, pass band up to 1 - kTransition, cutoff in
// the middle of the transition. h has 2 * half_len + 1 taps and sums to `up`:
//   R = max(up, down), beta = 0.1102 (A - 8.7), A = kStopbandDb,
//   half_len = ceil((A - 7.95) R / (2 * 2.285 * pi * kTransition)),
//   h[j] = sinc(fc (j - half_len) / R) * kaiser(j; beta), fc = 1 - kTransition / 2,
//   normalised so that sum(h) = up.
#pragma once

#include <cstdint>
#include <vector>

namespace ssondo {

constexpr double kResampleStopbandDb = 90.0;
constexpr double kResampleTransition = 0.08;
// Largest reduced up or down factor (longer filters would need megabytes per phase set).
constexpr std::int64_t kMaxResampleFactor = 65536;

class Resampler {
 public:
  // sr_in, sr_out >= 1 (Hz); throws std::invalid_argument if either is out of range or the
  // reduced factors exceed kMaxResampleFactor.
  Resampler(std::int64_t sr_in, std::int64_t sr_out);

  std::int64_t up() const { return up_; }
  std::int64_t down() const { return down_; }
  // ceil(t * up / down); throws std::invalid_argument if t is negative or t * up overflows.
  std::int64_t output_length(std::int64_t t) const;
  // The prototype filter h (2 * half_len + 1 taps, sum = up); empty when up == down.
  const std::vector<float>& filter() const { return h_; }
  // x: [batch, t] row-major; out: [batch, output_length(t)]. Threaded over rows and blocks of
  // output samples. With up == down the input is copied unchanged.
  void process(const float* x, std::int64_t batch, std::int64_t t, float* out) const;

 private:
  std::int64_t up_, down_, half_len_ = 0, taps_ = 0;  // taps_: per phase, a multiple of 8
  std::vector<float> h_;
  std::vector<float> phases_;  // [up, taps_]: phase p holds h[p + up * i] reversed
};

// Convenience for callers outside Python (the C++ app): resamples x [batch, t] from sr_in to
// sr_out Hz and returns [batch, ceil(t * sr_out / sr_in)] row-major.
std::vector<float> resample(const float* x, std::int64_t batch, std::int64_t t, std::int64_t sr_in,
                            std::int64_t sr_out);

}  // namespace ssondo
