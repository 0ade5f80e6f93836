// ssondo-embed: embeds WAV files with an exported ssondo student (TorchScript + libtorch).
//
//   ssondo-embed student.pt a.wav [b.wav ...] [--threads N] [--batch N] [--out emb.npy | --csv] [-v]
//
// The command line, reading and resampling, batching, timing and output are app.cpp's (shared
// with ssondo-embed-onnx); this file loads the TorchScript export and embeds a batch of windows
// with its `segments` method.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "app.hpp"

namespace {

ssondo_app::Student load_torchscript(const std::string& path, int threads) {
  if (threads > 0) at::set_num_threads(threads);
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw std::invalid_argument(path + ": cannot open model file");
  }
  std::unordered_map<std::string, std::string> extra{{"ssondo.json", ""}};
  auto module = std::make_shared<torch::jit::Module>();
  try {
    *module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception&) {
    throw std::invalid_argument(path + ": not a TorchScript file");
  }
  ssondo_app::Student s;
  s.sample_rate = ssondo_app::checked_sample_rate(path, extra["ssondo.json"]);
  s.window = ssondo_app::checked_window(path, extra["ssondo.json"]);
  if (!module->find_method("segments")) {
    throw std::invalid_argument(path + ": not a ssondo student (no segments method)");
  }
  module->eval();
  const int window = s.window;
  s.embed_windows = [module, path, window](std::vector<float>& windows, int n) {
    torch::NoGradGuard no_grad;
    torch::Tensor wav = torch::from_blob(windows.data(), {n, window}, torch::kFloat32);
    torch::Tensor emb =
        module->get_method("segments")({wav}).toTensor().contiguous().to(torch::kFloat32);
    if (emb.dim() != 3 || emb.size(0) != n || emb.size(1) != 1) {
      throw std::invalid_argument(path + ": segments returned shape " + c10::str(emb.sizes()) +
                                  ", expected [" + std::to_string(n) + ", 1, D]");
    }
    return std::vector<float>(emb.data_ptr<float>(), emb.data_ptr<float>() + emb.numel());
  };
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  return ssondo_app::run_app(argc, argv, {"ssondo-embed", "MODEL.pt", "libtorch"},
                             load_torchscript);
}
