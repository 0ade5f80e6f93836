// What ssondo-embed (libtorch, main.cpp) and ssondo-embed-onnx (onnxruntime, main_onnx.cpp)
// share: the command line, reading and resampling every input, the timing, printing and the
// atomic .npy writer. Each main file holds only how its runtime loads a model and runs one
// forward; this file and app.cpp use only the ssondo core (no torch, no onnxruntime).
//
//   NAME MODEL INPUT.wav [INPUT.wav ...] [--threads N] [--out emb.npy | --csv] [-v]
//
// Every input is read and checked before any output is written: on error the program prints one
// line naming the file and the problem, exits with status 1 and leaves no output file behind.
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

// A loaded student: its input rate (from its ssondo.json) and one forward on a mono buffer.
struct Student {
  int sample_rate = 0;
  // mono float32 samples at sample_rate -> the embedding [D]. Throws std::invalid_argument
  // (naming the model file) when the model's output is not [1, D] float32.
  std::function<std::vector<float>(std::vector<float>& mono)> embed;
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

}  // namespace ssondo_app
