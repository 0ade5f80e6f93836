// What ssondo-embed (libtorch, main.cpp) and ssondo-embed-onnx (onnxruntime, main_onnx.cpp)
// share: the command line, reading and resampling every input, the timing, printing and the
// atomic .npy writer. Each main file holds only how its runtime loads a model and embeds a
// batch of windows; this file and app.cpp use only the ssondo core (no torch, no onnxruntime).
//
//   NAME MODEL INPUT.wav [INPUT.wav ...] [--threads N] [--batch N] [--out emb.npy | --csv] [-v]
//
// Every input is read and checked before any output is written: on error the program prints one
// line naming the file and the problem, exits with status 1 and leaves no output file behind.
// Inputs are embedded as `ssondo embed` does (pyssondo/window_batches.py): every file is cut into
// the student's windows, the windows of all files share calls of --batch windows, and each
// file's embedding is its windows' mean weighted by their real samples.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace ssondo_app {

// How one program describes itself in its usage text and errors.
struct AppInfo {
  const char* name;     // "ssondo-embed"
  const char* model;    // "MODEL.pt": the model argument in the usage text
  const char* runtime;  // "libtorch": what --threads sets besides the resampler
};

// A loaded student: its input rate and window (from its ssondo.json) and its per-window
// embedding (the export's `segments`).
struct Student {
  int sample_rate = 0;
  int window = 0;  // samples per window (ssondo.json segment_samples)
  // `n` windows of `window` samples, row-major float32 [n, window] -> their embeddings [n, D]
  // row-major. Throws std::invalid_argument (naming the model file) when the model's output
  // is not [n, 1, D] float32.
  std::function<std::vector<float>(std::vector<float>& windows, int n)> embed_windows;
};

// Loads the model at `path` for `threads` runtime threads (0: the runtime's default). Throws
// std::invalid_argument naming the file: cannot open, not a model of this runtime, not a ssondo
// export (no ssondo.json), bad sample_rate.
using LoadStudent = std::function<Student(const std::string& path, int threads)>;

// The whole program: parses argv, loads the model, embeds every input, writes the output.
// Returns the exit status (0; 1 on bad input or arguments, 2 on any other error).
int run_app(int argc, char** argv, const AppInfo& info, const LoadStudent& load);

// Raises unless `sample_rate` read from `path`'s ssondo.json is valid; returns it as int.
int checked_sample_rate(const std::string& path, const std::string& ssondo_json);

// Raises unless `segment_samples` read from `path`'s ssondo.json is valid; returns it as int.
int checked_window(const std::string& path, const std::string& ssondo_json);

}  // namespace ssondo_app
