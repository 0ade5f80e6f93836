#include "wav.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <sys/stat.h>

namespace ssondo {
namespace {

constexpr std::uint16_t kPcm = 1, kFloat = 3, kExtensible = 0xFFFE;
constexpr std::uint32_t kMaxChannels = 1024;

std::uint32_t u32(const unsigned char* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}
std::uint16_t u16(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | p[1] << 8);
}

[[noreturn]] void fail(const std::string& name, const std::string& problem) {
  throw std::invalid_argument(name + ": " + problem);
}

// One sample at p in the given encoding, as float.
float decode(const unsigned char* p, std::uint16_t format, std::uint16_t bits) {
  if (format == kFloat) {
    if (bits == 32) {
      float f;
      std::uint32_t v = u32(p);
      std::memcpy(&f, &v, 4);
      return f;
    }
    std::uint64_t v = u32(p) | std::uint64_t(u32(p + 4)) << 32;
    double d;
    std::memcpy(&d, &v, 8);
    return static_cast<float>(d);
  }
  switch (bits) {
    case 8:
      return (static_cast<int>(p[0]) - 128) / 128.0f;
    case 16:
      return static_cast<std::int16_t>(u16(p)) / 32768.0f;
    case 24: {
      std::int32_t v = static_cast<std::int32_t>(p[0] | p[1] << 8 | p[2] << 16);
      if (v & 0x800000) v -= 0x1000000;
      return static_cast<float>(v / 8388608.0);
    }
    default:
      return static_cast<float>(static_cast<std::int32_t>(u32(p)) / 2147483648.0);
  }
}

}  // namespace

WavAudio parse_wav(const unsigned char* data, std::size_t size, const std::string& name) {
  if (size == 0) fail(name, "the file is empty (0 bytes)");
  if (size < 12 || std::memcmp(data, "RIFF", 4) != 0 || std::memcmp(data + 8, "WAVE", 4) != 0) {
    fail(name, "not a WAV file (no RIFF/WAVE header)");
  }
  std::uint16_t format = 0, channels = 0, bits = 0, block = 0;
  std::uint32_t rate = 0;
  bool have_fmt = false;
  std::size_t pos = 12;
  while (true) {
    if (pos + 8 > size) {
      fail(name, have_fmt ? "truncated: no data chunk" : "truncated header: no fmt chunk");
    }
    const std::uint32_t chunk = u32(data + pos + 4);
    const unsigned char* body = data + pos + 8;
    const std::size_t available = size - pos - 8;
    if (std::memcmp(data + pos, "fmt ", 4) == 0) {
      if (chunk < 16 || chunk > available) fail(name, "truncated header: short fmt chunk");
      format = u16(body);
      channels = u16(body + 2);
      rate = u32(body + 4);
      block = u16(body + 12);
      bits = u16(body + 14);
      if (format == kExtensible) {
        if (chunk < 40 || u16(body + 16) < 22) fail(name, "truncated header: short extensible fmt");
        format = u16(body + 24);  // the sub-format GUID starts with the format tag
      }
      if (format != kPcm && format != kFloat) {
        fail(name, "unsupported WAV encoding (format tag " + std::to_string(format) +
                       "); expected PCM (1) or IEEE float (3)");
      }
      const bool ok_bits = format == kPcm ? (bits == 8 || bits == 16 || bits == 24 || bits == 32)
                                          : (bits == 32 || bits == 64);
      if (!ok_bits) {
        fail(name, "unsupported sample size " + std::to_string(bits) + " bits for " +
                       (format == kPcm ? "PCM (8, 16, 24 or 32)" : "float (32 or 64)"));
      }
      if (channels < 1 || channels > kMaxChannels) {
        fail(name, "channel count " + std::to_string(channels) + " is outside [1, " +
                       std::to_string(kMaxChannels) + "]");
      }
      if (rate < 1) fail(name, "sample rate 0 Hz in the fmt chunk");
      if (block != channels * (bits / 8)) {
        fail(name, "block align " + std::to_string(block) + " != channels x bytes per sample (" +
                       std::to_string(channels * (bits / 8)) + ")");
      }
      have_fmt = true;
    } else if (std::memcmp(data + pos, "data", 4) == 0) {
      if (!have_fmt) fail(name, "no fmt chunk before the data chunk");
      if (chunk == 0) fail(name, "zero-length data chunk (no samples)");
      if (chunk == 0xFFFFFFFFu) fail(name, "data size unknown (streamed WAV is not supported)");
      if (chunk > available) {
        fail(name, "truncated: the data chunk declares " + std::to_string(chunk) +
                       " bytes, the file holds " + std::to_string(available));
      }
      if (chunk % block != 0) {
        fail(name, "truncated: data size " + std::to_string(chunk) +
                       " is not a whole number of " + std::to_string(block) + "-byte frames");
      }
      WavAudio out;
      out.sample_rate = rate;
      out.channels = channels;
      out.frames = chunk / block;
      out.samples.resize(static_cast<std::size_t>(out.frames) * channels);
      const std::size_t bytes = bits / 8;
      for (std::int64_t t = 0; t < out.frames; ++t) {
        const unsigned char* frame = body + static_cast<std::size_t>(t) * block;
        for (std::size_t c = 0; c < channels; ++c) {
          const float v = decode(frame + c * bytes, format, bits);
          if (!std::isfinite(v)) {
            fail(name, "NaN or inf sample at frame " + std::to_string(t));
          }
          out.samples[c * out.frames + t] = v;
        }
      }
      return out;
    }
    pos += 8 + static_cast<std::size_t>(chunk) + (chunk & 1);
  }
}

WavAudio read_wav_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) fail(path, "no such file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot be opened for reading");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(st.st_size));
  if (!bytes.empty() && !f.read(reinterpret_cast<char*>(bytes.data()), bytes.size())) {
    fail(path, "read error");
  }
  return parse_wav(bytes.data(), bytes.size(), path);
}

std::vector<float> mix_to_mono(const WavAudio& wav) {
  std::vector<float> mono(static_cast<std::size_t>(wav.frames), 0.0f);
  if (wav.channels < 1) return mono;
  for (std::int64_t c = 0; c < wav.channels; ++c) {
    const float* ch = wav.samples.data() + c * wav.frames;
    for (std::int64_t t = 0; t < wav.frames; ++t) mono[t] += ch[t];
  }
  const float scale = 1.0f / static_cast<float>(wav.channels);
  for (float& v : mono) v *= scale;
  return mono;
}

}  // namespace ssondo
