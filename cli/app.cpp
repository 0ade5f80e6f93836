// The command line, input reading, batching, timing and output shared by the two C++ apps (see
// app.hpp).
#include "app.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "metadata.hpp"
#include "parallel.hpp"
#include "resample.hpp"
#include "wav.hpp"

namespace ssondo_app {
namespace {

struct Options {
  std::string model;
  std::vector<std::string> inputs;
  std::string out;  // .npy path; empty = print
  bool csv = false;
  bool verbose = false;
  int threads = 0;
  int batch = 8;  // windows per call: pyssondo/window_batches.py DEFAULT_BATCH (tests/test_app.py)
};

std::string usage(const AppInfo& info) {
  return std::string("usage: ") + info.name + " " + info.model +
         " INPUT.wav [INPUT.wav ...] [--threads N] [--batch N] [--out emb.npy | --csv] [-v]\n"
         "\n"
         "Embeds WAV files with a student exported by 'ssondo export'. Prints one line per file\n"
         "(path then the embedding), or writes an [N, D] float32 .npy with --out, or CSV with --csv.\n"
         "\n"
         "  --threads N   threads for " + info.runtime + " and the resampler (default: all cores)\n"
         "  --batch N     windows per model call, the windows of all files sharing calls (default " +
         std::to_string(Options().batch) + ")\n"
         "  --out PATH    write embeddings to PATH (.npy), rows in input order\n"
         "  --csv         print CSV: path,e0,e1,...\n"
         "  -v            print when each file is done to stderr\n";
}

Options parse_args(int argc, char** argv, const AppInfo& info) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const std::string& name) -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(name + " needs a value");
      return argv[++i];
    };
    auto positive = [&](const std::string& name) -> int {
      const std::string v = value(name);
      int n = 0;
      try {
        n = std::stoi(v);
      } catch (const std::exception&) {
      }
      if (n < 1) throw std::invalid_argument(name + " " + v + ": expected a positive integer");
      return n;
    };
    if (a == "-h" || a == "--help") {
      std::cout << usage(info);
      std::exit(0);
    } else if (a == "--threads") {
      o.threads = positive(a);
    } else if (a == "--batch") {
      o.batch = positive(a);
    } else if (a == "--out" || a == "-o") {
      o.out = value(a);
    } else if (a == "--csv") {
      o.csv = true;
    } else if (a == "-v" || a == "--verbose") {
      o.verbose = true;
    } else if (a.size() > 1 && a[0] == '-') {
      throw std::invalid_argument("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2) {
    throw std::invalid_argument(std::string("expected ") + info.model + " and at least one WAV file");
  }
  if (o.csv && !o.out.empty()) throw std::invalid_argument("--csv and --out are exclusive");
  o.model = positional[0];
  o.inputs.assign(positional.begin() + 1, positional.end());
  return o;
}

// Mono float32 samples at `sample_rate`, read, mixed down and resampled with the ssondo core.
std::vector<float> read_mono(const std::string& path, int sample_rate) {
  const ssondo::WavAudio wav = ssondo::read_wav_file(path);  // throws naming the file and the problem
  std::vector<float> mono = ssondo::mix_to_mono(wav);
  if (wav.sample_rate == sample_rate) return mono;
  return ssondo::resample(mono.data(), 1, wav.frames, wav.sample_rate, sample_rate);
}

void write_npy_atomically(const std::string& path, const std::vector<std::vector<float>>& rows) {
  const std::size_t n = rows.size();
  const std::size_t d = n ? rows[0].size() : 0;
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(n) +
                       ", " + std::to_string(d) + "), }";
  const std::size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  header.append(63 - (preamble + header.size()) % 64, ' ');  // pad so data starts 64-aligned
  header.push_back('\n');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::invalid_argument(path + ": cannot write output");
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    f.write(reinterpret_cast<const char*>(magic), 8);
    const unsigned short len = static_cast<unsigned short>(header.size());
    const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff),
                                     static_cast<unsigned char>(len >> 8)};
    f.write(reinterpret_cast<const char*>(len_le), 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& r : rows) {
      f.write(reinterpret_cast<const char*>(r.data()), static_cast<std::streamsize>(r.size() * 4));
    }
    f.flush();
    if (!f) {
      f.close();
      std::remove(tmp.c_str());
      throw std::invalid_argument(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::invalid_argument(path + ": cannot rename the finished output into place");
  }
}

// The embedding of every input (rows in input order), as pyssondo/window_batches.py computes it:
// each file cut into windows of student.window samples from 0 (the last one zero padded), the
// windows of all files in calls of exactly o.batch windows (the last call padded with silent
// windows, unless the whole job is one call), each file's embedding its windows' embeddings
// weighted by their real samples over the file's.
std::vector<std::vector<float>> embed_all(const Options& o, const Student& student,
                                          const std::vector<std::vector<float>>& audio) {
  const std::size_t w = static_cast<std::size_t>(student.window);
  struct Window {
    std::size_t file, start, real;
  };
  std::vector<Window> windows;
  std::vector<std::size_t> last(audio.size());  // index of each file's last window
  for (std::size_t f = 0; f < audio.size(); ++f) {
    const std::size_t t = audio[f].size();
    if (t == 0) throw std::invalid_argument(o.inputs[f] + ": no samples to embed");
    for (std::size_t start = 0; start < t; start += w) {
      windows.push_back({f, start, std::min(w, t - start)});
    }
    last[f] = windows.size() - 1;
  }
  const std::size_t batch = static_cast<std::size_t>(o.batch);
  const std::size_t rows = std::min(batch, windows.size());  // every call's windows
  std::vector<std::vector<double>> sums(audio.size());
  std::vector<float> buf;
  std::size_t dim = 0, next_done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < windows.size(); i += batch) {
    const std::size_t n = std::min(batch, windows.size() - i);
    buf.assign(rows * w, 0.0f);
    for (std::size_t j = 0; j < n; ++j) {
      const Window& win = windows[i + j];
      std::copy_n(audio[win.file].begin() + win.start, win.real, buf.begin() + j * w);
    }
    const std::vector<float> out = student.embed_windows(buf, static_cast<int>(rows));
    if (i == 0) dim = out.size() / rows;
    if (dim == 0 || out.size() != rows * dim) {
      throw std::invalid_argument(o.model + ": embeddings of different sizes (" +
                                  std::to_string(dim) + " and " +
                                  std::to_string(out.size() / rows) + ")");
    }
    for (std::size_t j = 0; j < n; ++j) {
      const Window& win = windows[i + j];
      std::vector<double>& sum = sums[win.file];
      sum.resize(dim, 0.0);
      const double weight = static_cast<double>(win.real) / audio[win.file].size();
      for (std::size_t d = 0; d < dim; ++d) sum[d] += weight * out[j * dim + d];
    }
    for (; o.verbose && next_done < audio.size() && last[next_done] < i + n; ++next_done) {
      const double ms = std::chrono::duration<double, std::milli>(
                            std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "%s: done at %.1f ms (%.2f s of audio)\n",
                   o.inputs[next_done].c_str(), ms,
                   audio[next_done].size() / static_cast<double>(student.sample_rate));
    }
  }
  std::vector<std::vector<float>> embeddings;
  for (const auto& sum : sums) embeddings.emplace_back(sum.begin(), sum.end());
  return embeddings;
}

int run(const Options& o, const LoadStudent& load) {
  if (o.threads > 0) ssondo::set_num_threads(o.threads);
  Student student = load(o.model, o.threads);
  // Read every input first: a bad file stops the run before any output exists.
  std::vector<std::vector<float>> audio;
  audio.reserve(o.inputs.size());
  for (const auto& path : o.inputs) audio.push_back(read_mono(path, student.sample_rate));
  const std::vector<std::vector<float>> rows = embed_all(o, student, audio);

  if (!o.out.empty()) {
    write_npy_atomically(o.out, rows);
    return 0;
  }
  std::cout.precision(9);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::cout << o.inputs[i];
    const char sep = o.csv ? ',' : ' ';
    for (float v : rows[i]) std::cout << sep << v;
    std::cout << '\n';
  }
  return 0;
}

}  // namespace

int checked_sample_rate(const std::string& path, const std::string& ssondo_json) {
  if (ssondo_json.empty()) {
    throw std::invalid_argument(path + ": not a ssondo export (no ssondo.json inside)");
  }
  double rate = 0;
  try {
    rate = ssondo::json_number(ssondo_json, "sample_rate");
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": bad ssondo.json (" + e.what() + ")");
  }
  if (!(rate >= 1 && rate <= 1e7) || rate != static_cast<double>(static_cast<int>(rate))) {
    throw std::invalid_argument(path + ": bad sample_rate in ssondo.json");
  }
  return static_cast<int>(rate);
}

int checked_window(const std::string& path, const std::string& ssondo_json) {
  double window = 0;
  try {
    window = ssondo::json_number(ssondo_json, "segment_samples");
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": bad ssondo.json (" + e.what() + ")");
  }
  if (!(window >= 1 && window <= 1e9) ||
      window != static_cast<double>(static_cast<int>(window))) {
    throw std::invalid_argument(path + ": bad segment_samples in ssondo.json");
  }
  return static_cast<int>(window);
}

namespace {

// glibc malloc keeps freed memory mapped, so that a forward does not page-fault on the
// intermediate tensors of the previous one (pyssondo/allocator.py: the same numbers and why).
void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
#endif
}

}  // namespace

int run_app(int argc, char** argv, const AppInfo& info, const LoadStudent& load) {
  keep_freed_memory();
  try {
    return run(parse_args(argc, argv, info), load);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: error: %s\n", info.name, e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", info.name, e.what());
    return 2;
  }
}

}  // namespace ssondo_app
