#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "parallel.hpp"
#include "vec8.hpp"

namespace ssondo {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr std::int64_t kBlock = 8192;  // output samples per parallel work item
constexpr std::int64_t kMaxRate = std::int64_t(1) << 40;

// Modified Bessel function of the first kind, order 0 (power series).
double bessel_i0(double x) {
  double sum = 1.0, term = 1.0;
  const double q = 0.25 * x * x;
  for (int k = 1; k < 500; ++k) {
    term *= q / (static_cast<double>(k) * k);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return sum;
}

// sum_i h[i] * x[i] for i < k, k a multiple of 8, with eight partial sums.
SSONDO_MULTIVERSION
float dot8(const float* h, const float* x, std::int64_t k) {
  V8 acc = v8_splat(0.0f);
  for (std::int64_t i = 0; i < k; i += 8) acc = acc + v8_load(h + i) * v8_load(x + i);
  return v8_sum(acc);
}

}  // namespace

Resampler::Resampler(std::int64_t sr_in, std::int64_t sr_out) {
  for (auto [name, rate] : {std::pair<const char*, std::int64_t>{"sr_in", sr_in},
                            std::pair<const char*, std::int64_t>{"sr_out", sr_out}}) {
    if (rate < 1 || rate > kMaxRate) {
      throw std::invalid_argument(std::string("resample: ") + name + "=" +
                                  std::to_string(rate) + " is outside [1, " +
                                  std::to_string(kMaxRate) + "] Hz");
    }
  }
  const std::int64_t g = std::gcd(sr_in, sr_out);
  up_ = sr_out / g;
  down_ = sr_in / g;
  const std::int64_t r = std::max(up_, down_);
  if (r > kMaxResampleFactor) {
    throw std::invalid_argument("resample: " + std::to_string(sr_in) + " Hz -> " +
                                std::to_string(sr_out) + " Hz reduces to up=" +
                                std::to_string(up_) + ", down=" + std::to_string(down_) +
                                "; both must be <= " + std::to_string(kMaxResampleFactor));
  }
  if (up_ == down_) return;
  const double a = kResampleStopbandDb, beta = 0.1102 * (a - 8.7);
  half_len_ = static_cast<std::int64_t>(
      std::ceil((a - 7.95) * r / (2.0 * 2.285 * kPi * kResampleTransition)));
  const double fc = 1.0 - kResampleTransition / 2.0;
  const std::int64_t len = 2 * half_len_ + 1;
  std::vector<double> h(len);
  double sum = 0.0;
  const double i0_beta = bessel_i0(beta);
  for (std::int64_t j = 0; j < len; ++j) {
    const double x = static_cast<double>(j - half_len_);
    const double u = fc * x / static_cast<double>(r);
    const double sinc = x == 0 ? 1.0 : std::sin(kPi * u) / (kPi * u);
    const double ratio = x / static_cast<double>(half_len_);
    const double kaiser = bessel_i0(beta * std::sqrt(std::max(0.0, 1.0 - ratio * ratio))) / i0_beta;
    h[j] = sinc * kaiser;
    sum += h[j];
  }
  h_.resize(len);
  for (std::int64_t j = 0; j < len; ++j) h_[j] = static_cast<float>(h[j] * up_ / sum);
  taps_ = ((len + up_ - 1) / up_ + 7) / 8 * 8;
  phases_.assign(up_ * taps_, 0.0f);
  for (std::int64_t p = 0; p < up_; ++p) {
    for (std::int64_t i = 0; p + up_ * i < len; ++i) {
      phases_[p * taps_ + taps_ - 1 - i] = h_[p + up_ * i];
    }
  }
}

std::int64_t Resampler::output_length(std::int64_t t) const {
  if (t < 0 || t > (std::int64_t(1) << 62) / up_) {
    throw std::invalid_argument("resample: length " + std::to_string(t) + " is outside [0, " +
                                std::to_string((std::int64_t(1) << 62) / up_) + "]");
  }
  return (t * up_ + down_ - 1) / down_;
}

void Resampler::process(const float* x, std::int64_t batch, std::int64_t t, float* out) const {
  if (batch < 0) throw std::invalid_argument("resample: batch must be >= 0");
  const std::int64_t n_out = output_length(t);
  if (batch == 0 || n_out == 0) return;
  if (up_ == down_) {
    std::memcpy(out, x, sizeof(float) * batch * t);
    return;
  }
  const std::int64_t blocks = (n_out + kBlock - 1) / kBlock, k = taps_;
  parallel_for(static_cast<std::size_t>(batch * blocks), 1, [&](std::size_t begin,
                                                                std::size_t end) {
    for (std::size_t w = begin; w < end; ++w) {
      const std::int64_t b = static_cast<std::int64_t>(w) / blocks;
      const std::int64_t n0 = (static_cast<std::int64_t>(w) % blocks) * kBlock;
      const std::int64_t n1 = std::min(n_out, n0 + kBlock);
      const float* xb = x + b * t;
      float* yb = out + b * n_out;
      for (std::int64_t n = n0; n < n1; ++n) {
        const std::int64_t pos = n * down_ + half_len_;
        const float* hp = phases_.data() + (pos % up_) * k;
        // y[n] = sum_r hp[r] * x[first + r]
        const std::int64_t first = pos / up_ - (k - 1);
        if (first >= 0 && first + k <= t) {
          yb[n] = dot8(hp, xb + first, k);
        } else {
          float acc = 0.0f;
          const std::int64_t r0 = std::max<std::int64_t>(0, -first);
          const std::int64_t r1 = std::min<std::int64_t>(k, t - first);
          for (std::int64_t r = r0; r < r1; ++r) acc += hp[r] * xb[first + r];
          yb[n] = acc;
        }
      }
    }
  });
}

std::vector<float> resample(const float* x, std::int64_t batch, std::int64_t t, std::int64_t sr_in,
                            std::int64_t sr_out) {
  const Resampler r(sr_in, sr_out);
  std::vector<float> out(static_cast<std::size_t>(batch * r.output_length(t)));
  r.process(x, batch, t, out.data());
  return out;
}

}  // namespace ssondo
