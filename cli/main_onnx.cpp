// ssondo-embed-onnx: embeds WAV files with an ONNX ssondo student (onnxruntime, no libtorch).
//
//   ssondo-embed-onnx student.onnx a.wav [b.wav ...] [--threads N] [--batch N] [--out emb.npy | --csv] [-v]
//
// The command line, reading and resampling, batching, timing and output are app.cpp's (shared
// with the libtorch ssondo-embed); this file loads the ONNX export (input "wav" float32 [B, T],
// outputs "embedding" [B, D] and "segments" [B, S, D], ssondo.json in the model's
// metadata_props) and embeds a batch of windows (its "segments" output).
//
// Built against the C/C++ API headers of onnxruntime >= 1.21 and any library at least as new
// (the C API is a versioned, append-only table): ORT_API_MANUAL_INIT lets us ask the library
// for our headers' API version and fail with a message instead of crashing.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "app.hpp"

namespace {

constexpr const char* kInput = "wav";          // pyssondo/onnx_model.py INPUT
constexpr const char* kOutputs[] = {"embedding", "segments"};  // pyssondo/onnx_model.py OUTPUTS
constexpr const char* kOutput = kOutputs[1];  // the per-window embeddings this app pools

struct OnnxSession {
  Ort::Env env{ORT_LOGGING_LEVEL_ERROR, "ssondo-embed-onnx"};
  Ort::Session session{nullptr};
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
};

void init_onnxruntime() {
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    throw std::runtime_error(std::string("the onnxruntime library (") + base->GetVersionString() +
                             ") is older than the headers this program was built with (API " +
                             std::to_string(ORT_API_VERSION) + ")");
  }
  Ort::InitApi(api);
}

bool has_name(const std::vector<std::string>& names, const char* name) {
  for (const auto& n : names) {
    if (n == name) return true;
  }
  return false;
}

ssondo_app::Student load_onnx(const std::string& path, int threads) {
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw std::invalid_argument(path + ": cannot open model file");
  }
  init_onnxruntime();
  auto s = std::make_shared<OnnxSession>();
  Ort::SessionOptions opts;
  if (threads > 0) opts.SetIntraOpNumThreads(threads);
  opts.SetInterOpNumThreads(1);
  try {
    s->session = Ort::Session(s->env, path.c_str(), opts);
  } catch (const Ort::Exception&) {
    throw std::invalid_argument(path + ": not an ONNX model onnxruntime can load");
  }
  Ort::AllocatorWithDefaultOptions alloc;
  Ort::AllocatedStringPtr meta =
      s->session.GetModelMetadata().LookupCustomMetadataMapAllocated("ssondo.json", alloc);
  ssondo_app::Student student;
  student.sample_rate = ssondo_app::checked_sample_rate(path, meta ? meta.get() : "");
  std::vector<std::string> inputs, outputs;
  for (std::size_t i = 0; i < s->session.GetInputCount(); ++i) {
    inputs.emplace_back(s->session.GetInputNameAllocated(i, alloc).get());
  }
  for (std::size_t i = 0; i < s->session.GetOutputCount(); ++i) {
    outputs.emplace_back(s->session.GetOutputNameAllocated(i, alloc).get());
  }
  if (inputs.size() != 1 || inputs[0] != kInput || !has_name(outputs, kOutputs[0]) ||
      !has_name(outputs, kOutputs[1])) {
    throw std::invalid_argument(path + ": not a ssondo student graph (expected the input '" +
                                kInput + "' and the outputs '" + kOutputs[0] + "' and '" +
                                kOutputs[1] + "')");
  }
  student.window = ssondo_app::checked_window(path, meta ? meta.get() : "");

  const int window = student.window;
  student.embed_windows = [s, path, window](std::vector<float>& windows, int n) {
    const int64_t shape[2] = {n, window};
    Ort::Value wav =
        Ort::Value::CreateTensor<float>(s->cpu, windows.data(), windows.size(), shape, 2);
    const char* in[] = {kInput};
    const char* out[] = {kOutput};
    std::vector<Ort::Value> result = s->session.Run(Ort::RunOptions{nullptr}, in, &wav, 1, out, 1);
    const Ort::TensorTypeAndShapeInfo info = result[0].GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> dims = info.GetShape();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || dims.size() != 3 ||
        dims[0] != n || dims[1] != 1) {
      std::string got;
      for (int64_t d : dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
      throw std::invalid_argument(path + ": '" + kOutput + "' has shape [" + got +
                                  "], expected float32 [" + std::to_string(n) + ", 1, D]");
    }
    const float* data = result[0].GetTensorData<float>();
    return std::vector<float>(data, data + n * dims[2]);
  };
  return student;
}

}  // namespace

int main(int argc, char** argv) {
  return ssondo_app::run_app(argc, argv, {"ssondo-embed-onnx", "MODEL.onnx", "onnxruntime"},
                             load_onnx);
}
