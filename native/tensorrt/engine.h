// TensorRT engine: build from a QDQ ONNX model (or load a cached serialized engine), then run
// batches on several execution contexts, each with its own CUDA stream, optimization profile,
// pinned host staging buffers and device buffers. No Node-API here (see binding.cc).
//
// Targets TensorRT 10.x (named I/O tensors, enqueueV3) and compiles against 11.x, where
// networks are always strongly typed: INT8 then comes from the Q/DQ nodes alone and the FP16
// fallback flag no longer exists (Engine::precision() says which applied).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace cascade::trt {

/** Error kinds, mapped to JS error codes by the binding. */
class Error : public std::runtime_error {
 public:
  enum Kind { kArgs, kBuild, kRuntime };
  Error(Kind kind, const std::string& msg) : std::runtime_error(msg), kind(kind) {}
  Kind kind;
};

struct Options {
  std::vector<uint8_t> onnx;
  std::string cachePath;
  int device = 0;
  bool int8 = true;
  bool fp16 = true;
  std::string inputName;
  std::string outputName;
  std::vector<int64_t> sampleDims;  // per-sample input dims, batch excluded
  int minBatch = 1;
  int optBatch = 8;
  int maxBatch = 64;
  int contexts = 2;
  size_t workspaceBytes = size_t{1} << 28;
};

class Engine {
 public:
  /** Loads the cached engine when valid, else builds (and caches) one. @throws Error */
  static std::shared_ptr<Engine> Load(const Options& opts);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /**
   * Runs n samples on context `ctx` (blocking the calling worker thread until the stream is
   * done): input n x sampleSize floats, output n x outputSize floats. @throws Error
   */
  void Run(int ctx, const float* input, int n, float* output);

  size_t sampleSize() const { return sampleSize_; }
  size_t outputSize() const { return outputSize_; }
  int contexts() const { return static_cast<int>(slots_.size()); }
  int minBatch() const { return minBatch_; }
  int maxBatch() const { return maxBatch_; }
  bool fromCache() const { return fromCache_; }
  const std::string& precision() const { return precision_; }

 private:
  struct Impl;
  struct Slot;
  Engine();
  std::unique_ptr<Impl> impl_;
  std::vector<std::unique_ptr<Slot>> slots_;
  size_t sampleSize_ = 0;
  size_t outputSize_ = 0;
  int minBatch_ = 1;
  int maxBatch_ = 1;
  bool fromCache_ = false;
  std::string precision_;
  std::string inputName_;
  std::string outputName_;
  std::vector<int64_t> sampleDims_;
};

/** CUDA devices visible (0 when there is no driver or GPU). */
int DeviceCount();
/** Name of a CUDA device, e.g. "NVIDIA L4". @throws Error */
std::string DeviceName(int device);
/** TensorRT library version at run time, "major.minor.patch". */
std::string Version();

}  // namespace cascade::trt
