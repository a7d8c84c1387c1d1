// TensorRT engine; see engine.h.
#include "engine.h"

#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace cascade::trt {
namespace {

// Collects TensorRT's warnings and errors; the last errors go into thrown messages.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity > Severity::kWARNING) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (severity <= Severity::kERROR) {
      if (!errors_.empty()) errors_ += "; ";
      errors_ += msg;
      if (errors_.size() > 2000) errors_.erase(0, errors_.size() - 2000);
    }
  }
  std::string TakeErrors() {
    std::lock_guard<std::mutex> lock(mu_);
    std::string e;
    e.swap(errors_);
    return e;
  }

 private:
  std::mutex mu_;
  std::string errors_;
};

Logger& logger() {
  static Logger* l = new Logger();  // never destroyed: TensorRT may log during static teardown
  return *l;
}

std::string WithLog(const std::string& what) {
  const std::string log = logger().TakeErrors();
  return log.empty() ? what : what + ": " + log;
}

void Cuda(cudaError_t err, const char* what, Error::Kind kind = Error::kRuntime) {
  if (err != cudaSuccess) throw Error(kind, std::string(what) + ": " + cudaGetErrorString(err));
}

nvinfer1::Dims BatchDims(int n, const std::vector<int64_t>& sample) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<int32_t>(sample.size() + 1);
  d.d[0] = n;
  for (size_t i = 0; i < sample.size(); ++i) d.d[i + 1] = sample[i];
  return d;
}

bool ReadFile(const std::string& path, std::vector<char>* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return !out->empty();
}

// Written to a temporary file and renamed, so a crash never leaves a truncated cache entry.
void WriteFileAtomic(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!f) throw Error(Error::kBuild, "cannot write engine cache " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error(Error::kBuild, "cannot rename " + tmp);
}

template <typename T>
struct Deleter {
  void operator()(T* p) const { delete p; }
};
template <typename T>
using Ptr = std::unique_ptr<T, Deleter<T>>;

}  // namespace

struct Engine::Impl {
  Ptr<nvinfer1::IRuntime> runtime;
  Ptr<nvinfer1::ICudaEngine> engine;
  int device = 0;
};

struct Engine::Slot {
  Ptr<nvinfer1::IExecutionContext> ctx;
  cudaStream_t stream = nullptr;
  float* hostIn = nullptr;  // pinned
  float* hostOut = nullptr;
  void* devIn = nullptr;
  void* devOut = nullptr;
  std::atomic<bool> busy{false};
};

Engine::Engine() : impl_(new Impl()) {}

Engine::~Engine() {
  cudaSetDevice(impl_->device);
  for (auto& s : slots_) {
    if (s->stream) cudaStreamSynchronize(s->stream);
    s->ctx.reset();
    if (s->stream) cudaStreamDestroy(s->stream);
    cudaFreeHost(s->hostIn);
    cudaFreeHost(s->hostOut);
    cudaFree(s->devIn);
    cudaFree(s->devOut);
  }
  slots_.clear();
  impl_->engine.reset();
  impl_->runtime.reset();
}

namespace {

std::vector<char> BuildSerialized(const Options& o, std::string* precision) {
  Ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger()));
  if (!builder) throw Error(Error::kBuild, WithLog("createInferBuilder failed"));
  Ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(0));
  Ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger()));
  if (!parser->parse(o.onnx.data(), o.onnx.size())) {
    std::ostringstream msg;
    msg << "ONNX parser rejected the model";
    for (int32_t i = 0; i < parser->getNbErrors(); ++i) msg << (i ? "; " : ": ") << parser->getError(i)->desc();
    throw Error(Error::kBuild, WithLog(msg.str()));
  }
  Ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
  config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, o.workspaceBytes);
#if NV_TENSORRT_MAJOR < 11
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  // Explicit quantization: INT8 where the graph has Q/DQ pairs; FP16 allowed elsewhere.
  if (o.int8) config->setFlag(nvinfer1::BuilderFlag::kINT8);
  if (o.fp16) config->setFlag(nvinfer1::BuilderFlag::kFP16);
#pragma GCC diagnostic pop
  *precision = std::string(o.int8 ? "int8 (explicit Q/DQ)" : "fp32") + (o.fp16 ? " + fp16 fallback" : "");
#else
  // TensorRT 11 networks are strongly typed: precision follows the graph's types and Q/DQ nodes.
  *precision = "int8 (explicit Q/DQ, strongly typed; no fp16 fallback in TensorRT 11)";
#endif
  // One optimization profile per execution context, so that contexts run concurrently.
  for (int c = 0; c < o.contexts; ++c) {
    nvinfer1::IOptimizationProfile* p = builder->createOptimizationProfile();
    const char* in = o.inputName.c_str();
    if (!p->setDimensions(in, nvinfer1::OptProfileSelector::kMIN, BatchDims(o.minBatch, o.sampleDims)) ||
        !p->setDimensions(in, nvinfer1::OptProfileSelector::kOPT, BatchDims(o.optBatch, o.sampleDims)) ||
        !p->setDimensions(in, nvinfer1::OptProfileSelector::kMAX, BatchDims(o.maxBatch, o.sampleDims)) ||
        config->addOptimizationProfile(p) < 0) {
      throw Error(Error::kBuild, WithLog("invalid optimization profile for input " + o.inputName));
    }
  }
  Ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
  if (!plan || plan->size() == 0) throw Error(Error::kBuild, WithLog("engine build failed"));
  const char* bytes = static_cast<const char*>(plan->data());
  return std::vector<char>(bytes, bytes + plan->size());
}

}  // namespace

std::shared_ptr<Engine> Engine::Load(const Options& o) {
  if (o.minBatch < 1 || o.minBatch > o.optBatch || o.optBatch > o.maxBatch || o.contexts < 1 ||
      o.sampleDims.empty() || o.sampleDims.size() > 7) {
    throw Error(Error::kArgs, "bad batch range, context count or sample dims");
  }
  Cuda(cudaSetDevice(o.device), "cudaSetDevice", Error::kBuild);
  std::shared_ptr<Engine> e(new Engine());
  e->impl_->device = o.device;
  e->impl_->runtime.reset(nvinfer1::createInferRuntime(logger()));
  if (!e->impl_->runtime) throw Error(Error::kBuild, WithLog("createInferRuntime failed"));

  std::vector<char> plan;
  if (!o.cachePath.empty() && ReadFile(o.cachePath, &plan)) {
    e->impl_->engine.reset(e->impl_->runtime->deserializeCudaEngine(plan.data(), plan.size()));
    e->fromCache_ = e->impl_->engine != nullptr;
    logger().TakeErrors();  // a stale or foreign cache entry is rebuilt, not an error
  }
  if (!e->impl_->engine) {
    plan = BuildSerialized(o, &e->precision_);
    e->impl_->engine.reset(e->impl_->runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!e->impl_->engine) throw Error(Error::kBuild, WithLog("cannot deserialize the engine just built"));
    if (!o.cachePath.empty()) WriteFileAtomic(o.cachePath, plan.data(), plan.size());
  } else {
    e->precision_ = "as cached";
  }

  nvinfer1::ICudaEngine& eng = *e->impl_->engine;
  const char* in = o.inputName.c_str();
  const char* out = o.outputName.c_str();
  if (eng.getTensorIOMode(in) != nvinfer1::TensorIOMode::kINPUT ||
      eng.getTensorIOMode(out) != nvinfer1::TensorIOMode::kOUTPUT) {
    throw Error(Error::kBuild, "engine has no input " + o.inputName + " or no output " + o.outputName);
  }
  if (eng.getTensorDataType(in) != nvinfer1::DataType::kFLOAT ||
      eng.getTensorDataType(out) != nvinfer1::DataType::kFLOAT) {
    throw Error(Error::kBuild, "engine input and output must be float32");
  }
  const nvinfer1::Dims od = eng.getTensorShape(out);
  size_t outSize = 1;
  for (int32_t i = 1; i < od.nbDims; ++i) {
    if (od.d[i] < 1) throw Error(Error::kBuild, "output has a dynamic dimension besides the batch");
    outSize *= static_cast<size_t>(od.d[i]);
  }
  e->sampleSize_ = 1;
  for (int64_t d : o.sampleDims) e->sampleSize_ *= static_cast<size_t>(d);
  e->outputSize_ = outSize;
  e->minBatch_ = o.minBatch;
  e->maxBatch_ = o.maxBatch;
  e->inputName_ = o.inputName;
  e->outputName_ = o.outputName;
  e->sampleDims_ = o.sampleDims;

  const int profiles = eng.getNbOptimizationProfiles();
  const int n = std::min(o.contexts, profiles);
  for (int c = 0; c < n; ++c) {
    auto s = std::make_unique<Slot>();
    Cuda(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    const size_t inBytes = e->sampleSize_ * o.maxBatch * sizeof(float);
    const size_t outBytes = e->outputSize_ * o.maxBatch * sizeof(float);
    Cuda(cudaMallocHost(reinterpret_cast<void**>(&s->hostIn), inBytes), "cudaMallocHost");
    Cuda(cudaMallocHost(reinterpret_cast<void**>(&s->hostOut), outBytes), "cudaMallocHost");
    Cuda(cudaMalloc(&s->devIn, inBytes), "cudaMalloc");
    Cuda(cudaMalloc(&s->devOut, outBytes), "cudaMalloc");
    s->ctx.reset(eng.createExecutionContext());
    if (!s->ctx) throw Error(Error::kRuntime, WithLog("createExecutionContext failed"));
    if (!s->ctx->setOptimizationProfileAsync(c, s->stream) || !s->ctx->setTensorAddress(in, s->devIn) ||
        !s->ctx->setTensorAddress(out, s->devOut)) {
      throw Error(Error::kRuntime, WithLog("cannot bind profile or tensors of context " + std::to_string(c)));
    }
    Cuda(cudaStreamSynchronize(s->stream), "cudaStreamSynchronize");
    e->slots_.push_back(std::move(s));
  }
  return e;
}

void Engine::Run(int ctx, const float* input, int n, float* output) {
  if (ctx < 0 || ctx >= contexts()) throw Error(Error::kArgs, "no execution context " + std::to_string(ctx));
  if (n < minBatch_ || n > maxBatch_) {
    throw Error(Error::kArgs, "batch " + std::to_string(n) + " outside the engine's profile [" +
                                  std::to_string(minBatch_) + ", " + std::to_string(maxBatch_) + "]");
  }
  Slot& s = *slots_[ctx];
  bool expected = false;
  if (!s.busy.compare_exchange_strong(expected, true)) {
    throw Error(Error::kArgs, "execution context " + std::to_string(ctx) + " is busy");
  }
  struct Release {
    std::atomic<bool>& b;
    ~Release() { b.store(false); }
  } release{s.busy};

  Cuda(cudaSetDevice(impl_->device), "cudaSetDevice");
  const size_t inBytes = sampleSize_ * n * sizeof(float);
  const size_t outBytes = outputSize_ * n * sizeof(float);
  std::memcpy(s.hostIn, input, inBytes);
  Cuda(cudaMemcpyAsync(s.devIn, s.hostIn, inBytes, cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync H2D");
  if (!s.ctx->setInputShape(inputName_.c_str(), BatchDims(n, sampleDims_))) {
    throw Error(Error::kRuntime, WithLog("setInputShape failed"));
  }
  if (!s.ctx->enqueueV3(s.stream)) throw Error(Error::kRuntime, WithLog("enqueueV3 failed"));
  Cuda(cudaMemcpyAsync(s.hostOut, s.devOut, outBytes, cudaMemcpyDeviceToHost, s.stream), "cudaMemcpyAsync D2H");
  Cuda(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  std::memcpy(output, s.hostOut, outBytes);
}

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::string DeviceName(int device) {
  cudaDeviceProp p{};
  Cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return p.name;
}

std::string Version() {
  const int32_t v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

}  // namespace cascade::trt
