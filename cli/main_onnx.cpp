// ssondo-embed-onnx: embeds WAV files with an ONNX ssondo student (onnxruntime, no libtorch).
//
//   ssondo-embed-onnx student.onnx a.wav [b.wav ...] [--threads N] [--out emb.npy | --csv] [-v]
//
// The command line, reading and resampling, timing and output are app.cpp's (shared with the
// libtorch ssondo-embed); this file loads the ONNX export (input "wav" float32 [B, T], output
// "embedding" [B, D], ssondo.json in the model's metadata_props) and runs one forward.
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
constexpr const char* kOutput = "embedding";   // pyssondo/onnx_model.py OUTPUTS[0]

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
  if (inputs.size() != 1 || inputs[0] != kInput || !has_name(outputs, kOutput)) {
    throw std::invalid_argument(path + ": not a ssondo student graph (expected the input '" +
                                kInput + "' and an output '" + kOutput + "')");
  }

  student.embed = [s, path](std::vector<float>& mono) {
    const int64_t shape[2] = {1, static_cast<int64_t>(mono.size())};
    Ort::Value wav = Ort::Value::CreateTensor<float>(s->cpu, mono.data(), mono.size(), shape, 2);
    const char* in[] = {kInput};
    const char* out[] = {kOutput};
    std::vector<Ort::Value> result = s->session.Run(Ort::RunOptions{nullptr}, in, &wav, 1, out, 1);
    const Ort::TensorTypeAndShapeInfo info = result[0].GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> dims = info.GetShape();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || dims.size() != 2 ||
        dims[0] != 1) {
      std::string got;
      for (int64_t d : dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
      throw std::invalid_argument(path + ": '" + kOutput + "' has shape [" + got +
                                  "], expected float32 [1, D]");
    }
    const float* data = result[0].GetTensorData<float>();
    return std::vector<float>(data, data + dims[1]);
  };
  return student;
}

}  // namespace

int main(int argc, char** argv) {
  return ssondo_app::run_app(argc, argv, {"ssondo-embed-onnx", "MODEL.onnx", "onnxruntime"},
                             load_onnx);
}
