// Fused preprocessing kernel: camera frame -> model input tensor, one pass.
//
// The plan (resampling taps and weights, content box, per-channel constants) is computed and
// validated in TypeScript (models/preprocess-plan.ts); this kernel executes it with the same
// integer arithmetic as the TypeScript reference (models/preprocess.ts), so both are bit-exact:
// every sum is an exact integer, and the only floating-point step is
// x = float(double(r) * A[k] + B[k]), computed without FMA contraction (-ffp-contract=off).
//
// No Node-API here: the addon (addon.cc) copies arguments into a Job and calls Run() on a libuv
// pool thread. Validate() re-checks everything that memory safety depends on, so a bad call
// through the raw binding raises an error instead of reading or writing out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cascade {

// Must match models/preprocess-plan.ts (FormatCode, OutputCode, AXIS_ONE).
enum Format : int32_t { kGray = 0, kRgb = 1, kBgr = 2, kNv12 = 3 };
enum OutKind : int32_t { kFloat32 = 0, kUint8 = 1, kInt8 = 2 };
constexpr int32_t kAxisOne = 2048;

// Layout of the Int32Array of scalar parameters.
enum IntParam : int {
  kIFormat, kIWidth, kIHeight, kIStride, kIOutKind, kIOutW, kIOutH, kIOutC, kINchw,
  kIBoxX, kIBoxY, kIBoxW, kIBoxH, kIKx, kIKy, kISrcC, kIPerm0, kIPerm1, kIPerm2,
  kIQZero, kIQMin, kIQMax, kIntParamCount
};
// Layout of the Float64Array of scalar parameters.
enum FloatParam : int { kFA = 0, kFB = 3, kFLuma = 6, kFPadR = 9, kFQScale = 10, kFloatParamCount = 11 };

struct Job {
  const uint8_t* src = nullptr;
  size_t srcLen = 0;
  void* out = nullptr;
  size_t outLen = 0;  // elements
  const int32_t* xIdx = nullptr;
  const int32_t* xW = nullptr;
  size_t xLen = 0;
  const int32_t* yIdx = nullptr;
  const int32_t* yW = nullptr;
  size_t yLen = 0;
  int32_t i[kIntParamCount] = {};
  double f[kFloatParamCount] = {};
};

// Empty when the job is safe to run; otherwise "TypeError: ..." or "RangeError: ..." text.
// Validate = ValidateShape (O(1): formats, sizes, lengths, constants) then ValidateTaps (O(taps):
// every tap index inside the frame, weights in range); ValidateTaps assumes ValidateShape passed.
std::string Validate(const Job& job);
std::string ValidateShape(const Job& job);
std::string ValidateTaps(const Job& job);

// Runs a validated job. Thread-safe for distinct output buffers.
void Run(const Job& job);
// Same, with the column accumulators in `scratch` (resized as needed, kept by a long-lived
// caller so that a steady stream of frames allocates nothing). May throw std::bad_alloc.
void Run(const Job& job, std::vector<int32_t>& scratch);

}  // namespace cascade
