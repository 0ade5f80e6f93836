#include "mel.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "parallel.hpp"
#include "vec8.hpp"

namespace ssondo {
namespace {

constexpr std::size_t L = kFftLanes;
constexpr std::int64_t kMaxHop = std::int64_t(1) << 31;
constexpr std::int64_t kMaxMels = std::int64_t(1) << 16;

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("log_mel: " + what); }

std::size_t checked_n_fft(std::int64_t n_fft) {
  if (n_fft < 1 || n_fft > static_cast<std::int64_t>(kMaxFftSize)) {
    bad("n_fft=" + std::to_string(n_fft) + " is outside [1, " + std::to_string(kMaxFftSize) + "]");
  }
  return static_cast<std::size_t>(n_fft);
}

// kFftLanes windowed frames in the lane layout, with even and odd samples apart: sample j of
// lane l, rows[l][j] * window[j], goes to (j even ? even : odd)[(j / 2) * stride + l], j < n.
SSONDO_MULTIVERSION
void window_lanes(const float* const* rows, const float* window, std::int64_t n, float* even,
                  float* odd, std::size_t stride) {
  std::int64_t j = 0;
  for (; j + static_cast<std::int64_t>(L) <= n; j += L) {
    const V8 w = v8_load(window + j);
    V8 r[L];
    for (std::size_t l = 0; l < L; ++l) r[l] = v8_load(rows[l] + j) * w;
    v8_transpose(r);
    for (std::size_t i = 0; i < L; i += 2) {
      v8_store(even + (j / 2 + i / 2) * stride, r[i]);
      v8_store(odd + (j / 2 + i / 2) * stride, r[i + 1]);
    }
  }
  for (; j < n; ++j) {
    float* dst = (j % 2 == 0 ? even : odd) + (j / 2) * stride;
    for (std::size_t l = 0; l < L; ++l) dst[l] = rows[l][j] * window[j];
  }
}

// Log-mel of kFftLanes spectra: power (or magnitude) of bins (re, im) [nb, L] (re is
// overwritten), then out[m, l] = log(sum over band m's bins k of weight * power[k, l] +
// log_offset); out is [n_mels, L].
SSONDO_MULTIVERSION
void log_mel_bands(std::int64_t nb, int power, std::int64_t n_mels, const std::int64_t* lo,
                   const std::int64_t* hi, const std::int64_t* off, const float* weights,
                   float log_offset, float* re, const float* im, float* out) {
  for (std::int64_t k = 0; k < nb; ++k) {
    const V8 r = v8_load(re + k * L), i = v8_load(im + k * L);
    V8 p = r * r + i * i;
    if (power == 1) {
      for (std::size_t l = 0; l < L; ++l) p[l] = std::sqrt(p[l]);
    }
    v8_store(re + k * L, p);
  }
  for (std::int64_t m = 0; m < n_mels; ++m) {
    V8 acc = v8_splat(0.0f);
    const float* w = weights + off[m] - lo[m];
    for (std::int64_t k = lo[m]; k < hi[m]; ++k) acc = acc + w[k] * v8_load(re + k * L);
    v8_store(out + m * L, acc + log_offset);
  }
  // A separate pass: the logs are independent, so their polynomial chains overlap.
  for (std::int64_t m = 0; m < n_mels; ++m) v8_store(out + m * L, v8_log(v8_load(out + m * L)));
}

}  // namespace

PadMode parse_pad_mode(const std::string& name) {
  if (name == "constant") return PadMode::kConstant;
  if (name == "reflect") return PadMode::kReflect;
  bad("pad_mode '" + name + "' is invalid; expected 'reflect' or 'constant'");
}

std::int64_t padded_index(std::int64_t i, std::int64_t t, PadMode mode) {
  if (i >= 0 && i < t) return i;
  if (mode == PadMode::kConstant || t <= 0) return -1;
  if (t == 1) return 0;
  const std::int64_t period = 2 * (t - 1);
  std::int64_t m = i % period;
  if (m < 0) m += period;
  return m < t ? m : period - m;
}

LogMelPlan::LogMelPlan(std::int64_t n_fft, std::int64_t hop, const float* window,
                       const float* filterbank, std::int64_t n_mels, bool center,
                       PadMode pad_mode, int power, float log_offset)
    : n_fft_(n_fft),
      hop_(hop),
      n_mels_(n_mels),
      center_(center),
      pad_mode_(pad_mode),
      power_(power),
      log_offset_(log_offset),
      fft_(checked_n_fft(n_fft)) {
  if (hop < 1 || hop > kMaxHop) {
    bad("hop_length=" + std::to_string(hop) + " is outside [1, " + std::to_string(kMaxHop) + "]");
  }
  if (n_mels < 1 || n_mels > kMaxMels) {
    bad("n_mels=" + std::to_string(n_mels) + " is outside [1, " + std::to_string(kMaxMels) + "]");
  }
  if (power != 1 && power != 2) bad("power=" + std::to_string(power) + " must be 1 or 2");
  if (!(log_offset > 0.0f) || !std::isfinite(log_offset)) {
    bad("log_offset=" + std::to_string(log_offset) + " must be a finite number > 0");
  }
  if (window == nullptr || filterbank == nullptr) bad("window and filterbank must be given");
  window_.assign(window, window + n_fft);
  for (std::int64_t j = 0; j < n_fft; ++j) {
    if (!std::isfinite(window_[j])) bad("window[" + std::to_string(j) + "] is not finite");
  }
  const std::int64_t nb = bins();
  band_lo_.resize(n_mels);
  band_hi_.resize(n_mels);
  band_off_.resize(n_mels);
  for (std::int64_t m = 0; m < n_mels; ++m) {
    const float* row = filterbank + m * nb;
    std::int64_t lo = nb, hi = 0;
    for (std::int64_t k = 0; k < nb; ++k) {
      if (!std::isfinite(row[k]) || row[k] < 0.0f) {
        bad("filterbank[" + std::to_string(m) + ", " + std::to_string(k) +
            "] must be finite and >= 0");
      }
      if (row[k] != 0.0f) {
        lo = std::min(lo, k);
        hi = k + 1;
      }
    }
    if (hi <= lo) lo = hi = 0;  // an empty band: its output is log(log_offset)
    band_lo_[m] = lo;
    band_hi_[m] = hi;
    band_off_[m] = static_cast<std::int64_t>(weights_.size());
    weights_.insert(weights_.end(), row + lo, row + hi);
  }
}

std::int64_t LogMelPlan::num_frames(std::int64_t t) const {
  if (center_) return 1 + t / hop_;
  return 1 + std::max<std::int64_t>(0, t - n_fft_) / hop_;
}

void LogMelPlan::compute(const float* x, std::int64_t batch, std::int64_t t, float* out) const {
  if (batch < 0) bad("batch=" + std::to_string(batch) + " must be >= 0");
  if (t < 1) bad("signal length " + std::to_string(t) + " must be >= 1 sample");
  if (batch == 0) return;
  const std::int64_t frames = num_frames(t);
  const std::int64_t blocks = (frames + static_cast<std::int64_t>(L) - 1) / L;
  const std::int64_t n = n_fft_, nb = bins(), left = center_ ? n_fft_ / 2 : 0;
  const PadMode mode = center_ ? pad_mode_ : PadMode::kConstant;
  // Even n_fft: frames are written as the real FFT's even/odd halves, skipping its repacking.
  const bool split = n % 2 == 0;
  parallel_for(static_cast<std::size_t>(batch * blocks), 1, [&](std::size_t begin,
                                                                std::size_t end) {
    std::vector<float> frame(n * L), edge(n * L), re(nb * L), im(nb * L), mel(n_mels_ * L),
        work(fft_.workspace_floats());
    for (std::size_t w = begin; w < end; ++w) {
      const std::int64_t b = static_cast<std::int64_t>(w) / blocks;
      const std::int64_t f0 = (static_cast<std::int64_t>(w) % blocks) * L;
      const std::int64_t valid = std::min<std::int64_t>(L, frames - f0);
      const float* xb = x + b * t;
      // Lane l reads frame f0 + l from the signal itself, or, where the frame runs past an
      // edge (or l >= valid), from its padded copy in edge.
      const float* rows[L];
      for (std::int64_t l = 0; l < static_cast<std::int64_t>(L); ++l) {
        const std::int64_t start = (f0 + l) * hop_ - left;
        if (l < valid && start >= 0 && start + n <= t) {
          rows[l] = xb + start;
          continue;
        }
        float* row = edge.data() + l * n;
        for (std::int64_t j = 0; j < n; ++j) {
          const std::int64_t i = l < valid ? padded_index(start + j, t, mode) : -1;
          row[j] = i < 0 ? 0.0f : xb[i];
        }
        rows[l] = row;
      }
      if (split) {
        window_lanes(rows, window_.data(), n, frame.data(), frame.data() + n / 2 * L, L);
        fft_.forward_split(frame.data(), frame.data() + n / 2 * L, re.data(), im.data(),
                           work.data());
      } else {
        window_lanes(rows, window_.data(), n, frame.data(), frame.data() + L, 2 * L);
        fft_.forward(frame.data(), re.data(), im.data(), work.data());
      }
      log_mel_bands(nb, power_, n_mels_, band_lo_.data(), band_hi_.data(), band_off_.data(),
                    weights_.data(), log_offset_, re.data(), im.data(), mel.data());
      for (std::int64_t m = 0; m < n_mels_; ++m) {
        float* o = out + (b * n_mels_ + m) * frames + f0;
        for (std::int64_t l = 0; l < valid; ++l) o[l] = mel[m * L + l];
      }
    }
  });
}

}  // namespace ssondo
