// Log-mel spectrogram: framing (optional centre padding), window, real FFT, power or
// magnitude, a sparse mel filterbank and log(mel + offset). Batched and threaded.
//
// The window and the filterbank are given by the caller (pyssondo/frontend/filters.py computes
// them once from MelConfig), so this file holds no mel-scale formulas; it stores, per band, only
// the bins where the filterbank row is non-zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fft.hpp"

namespace ssondo {

enum class PadMode { kConstant, kReflect };

// Parses "constant" or "reflect"; throws std::invalid_argument otherwise.
PadMode parse_pad_mode(const std::string& name);

// Sample index i of a signal of length t read with padding: inside [0, t) it is i itself;
// outside, kReflect mirrors without repeating the edge (numpy's np.pad mode="reflect",
// repeated as often as needed; a length-1 signal repeats its sample) and kConstant gives -1
// (a zero sample).
std::int64_t padded_index(std::int64_t i, std::int64_t t, PadMode mode);

class LogMelPlan {
 public:
  // window: n_fft floats (already zero-padded to n_fft). filterbank: [n_mels, n_fft/2 + 1]
  // row-major, finite, >= 0. hop >= 1. center pads n_fft/2 samples on the left and
  // n_fft - n_fft/2 on the right with pad_mode; without centering a signal shorter than
  // n_fft is zero-padded on the right to one frame. power is 1 (magnitude) or 2 (power).
  // log_offset > 0. Throws std::invalid_argument naming any invalid value.
  LogMelPlan(std::int64_t n_fft, std::int64_t hop, const float* window, const float* filterbank,
             std::int64_t n_mels, bool center, PadMode pad_mode, int power, float log_offset);

  std::int64_t n_fft() const { return n_fft_; }
  std::int64_t n_mels() const { return n_mels_; }
  std::int64_t bins() const { return n_fft_ / 2 + 1; }
  // Frames for a signal of t >= 1 samples: 1 + t / hop when centred, else
  // 1 + max(0, t - n_fft) / hop.
  std::int64_t num_frames(std::int64_t t) const;
  // x: [batch, t] row-major, t >= 1. out: [batch, n_mels, num_frames(t)]. Threaded over
  // (batch item, block of frames) with parallel_for.
  void compute(const float* x, std::int64_t batch, std::int64_t t, float* out) const;

 private:
  std::int64_t n_fft_, hop_, n_mels_;
  bool center_;
  PadMode pad_mode_;
  int power_;
  float log_offset_;
  RealFFT fft_;
  std::vector<float> window_;
  // Band m uses bins [band_lo_[m], band_hi_[m]) with weights at weights_[band_off_[m] ...].
  std::vector<std::int64_t> band_lo_, band_hi_, band_off_;
  std::vector<float> weights_;
};

}  // namespace ssondo
