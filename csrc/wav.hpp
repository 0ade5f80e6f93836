// A strict RIFF/WAVE reader for the C++ app (cli/) and the Python package (_core.read_wav).
//
// Reads integer PCM (8-bit unsigned, 16, 24 and 32-bit signed), IEEE float (32 and 64-bit),
// plain or WAVE_FORMAT_EXTENSIBLE, any number of channels. Samples become float32 scaled
// like libsndfile does: an integer of b bits is divided by 2^(b-1) (8-bit: (v - 128) / 128).
// Every defect (no such file, not a WAV file, unsupported encoding, truncated header or data,
// no samples, NaN/inf samples) throws std::invalid_argument naming the file and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ssondo {

struct WavAudio {
  std::int64_t sample_rate = 0;  // Hz
  std::int64_t channels = 0;
  std::int64_t frames = 0;
  std::vector<float> samples;  // planar [channels, frames]
};

// Reads the file at `path`.
WavAudio read_wav_file(const std::string& path);
// Parses a WAV file held in memory; `name` is used in error messages.
WavAudio parse_wav(const unsigned char* data, std::size_t size, const std::string& name);
// The average of the channels, [frames].
std::vector<float> mix_to_mono(const WavAudio& wav);

}  // namespace ssondo
