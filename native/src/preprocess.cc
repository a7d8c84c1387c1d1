// Fused preprocessing kernel; see preprocess.h for the contract.
#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace cascade {
namespace {

inline int32_t Clamp255(int32_t v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

// Vertical pass (first, because it runs over contiguous bytes and vectorizes): adds wy times one
// source row, [x0, x0 + n) in pixels, to the column accumulators. The horizontal pass then
// applies the x taps to the accumulators. Both orders give the same exact integer sums.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(CASCADE_SANITIZE)
#define CASCADE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CASCADE_CLONES
#endif

CASCADE_CLONES void AddRow(int32_t* __restrict acc, const uint8_t* __restrict row, int32_t wy, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += wy * row[i];
}

// NV12 luma expanded from video range (16-235) to 0-255, as for a gray pixel through BT.601.
CASCADE_CLONES void AddRowNv12Gray(int32_t* __restrict acc, const uint8_t* __restrict row, int32_t wy, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] += wy * Clamp255((298 * (row[i] - 16) + 128) >> 8);
}

// NV12 -> RGB per pixel (BT.601 video range, integer); row and uvRow start at an even x.
void AddRowNv12Rgb(int32_t* acc, const uint8_t* row, const uint8_t* uvRow, int32_t wy, size_t n, int32_t x0) {
  for (size_t i = 0; i < n; ++i) {
    const int32_t x = x0 + static_cast<int32_t>(i);
    const int32_t c = 298 * (row[i] - 16) + 128;
    const uint8_t* uv = uvRow + (x & ~1);
    const int32_t d = uv[0] - 128;
    const int32_t e = uv[1] - 128;
    acc[3 * i] += wy * Clamp255((c + 409 * e) >> 8);
    acc[3 * i + 1] += wy * Clamp255((c - 100 * d - 208 * e) >> 8);
    acc[3 * i + 2] += wy * Clamp255((c + 516 * d) >> 8);
  }
}

// Writes normalised (and optionally quantized) values.
class Writer {
 public:
  explicit Writer(const Job& j)
      : kind_(j.i[kIOutKind]),
        qScale_(static_cast<float>(j.f[kFQScale])),
        qZero_(j.i[kIQZero]),
        qMin_(j.i[kIQMin]),
        qMax_(j.i[kIQMax]),
        f32_(static_cast<float*>(j.out)),
        u8_(static_cast<uint8_t*>(j.out)),
        i8_(static_cast<int8_t*>(j.out)) {
    std::memcpy(a_, j.f + kFA, sizeof a_);
    std::memcpy(b_, j.f + kFB, sizeof b_);
  }

  // r: exact fixed-point value (an integer below 2^53).
  inline void Put(size_t i, int c, double r) const {
    const float x = static_cast<float>(r * a_[c] + b_[c]);
    if (kind_ == kFloat32) {
      f32_[i] = x;
      return;
    }
    // ONNX QuantizeLinear: float division, round half to even (default rounding mode).
    float q = std::nearbyint(x / qScale_) + static_cast<float>(qZero_);
    // NaN-safe clamp: a NaN lands on qMin rather than in an undefined float -> int conversion.
    if (q > static_cast<float>(qMax_)) q = static_cast<float>(qMax_);
    if (!(q >= static_cast<float>(qMin_))) q = static_cast<float>(qMin_);
    if (kind_ == kUint8) u8_[i] = static_cast<uint8_t>(q);
    else i8_[i] = static_cast<int8_t>(q);
  }

 private:
  int32_t kind_;
  float qScale_;
  int32_t qZero_, qMin_, qMax_;
  double a_[3], b_[3];
  float* f32_;
  uint8_t* u8_;
  int8_t* i8_;
};

}  // namespace

std::string ValidateShape(const Job& j) {
  const int32_t* p = j.i;
  const int32_t fmt = p[kIFormat], w = p[kIWidth], h = p[kIHeight], stride = p[kIStride];
  if (fmt < kGray || fmt > kNv12) return "TypeError: unknown pixel format code " + std::to_string(fmt);
  if (w < 1 || h < 1) return "RangeError: frame width and height must be positive";
  if (fmt == kNv12 && ((w | h) & 1)) return "RangeError: NV12 frame needs even width and height";
  const int64_t rowBytes = static_cast<int64_t>(w) * ((fmt == kRgb || fmt == kBgr) ? 3 : 1);
  if (stride < rowBytes) return "RangeError: stride shorter than a row";
  const int64_t rows = fmt == kNv12 ? static_cast<int64_t>(h) + h / 2 : h;
  if (static_cast<int64_t>(j.srcLen) < static_cast<int64_t>(stride) * (rows - 1) + rowBytes) {
    return "RangeError: frame buffer too short for its size, format and stride";
  }
  const int32_t kind = p[kIOutKind], outW = p[kIOutW], outH = p[kIOutH], outC = p[kIOutC];
  if (kind < kFloat32 || kind > kInt8) return "TypeError: unknown output kind";
  if (outW < 1 || outH < 1 || (outC != 1 && outC != 3)) return "RangeError: bad output shape";
  if (static_cast<int64_t>(j.outLen) != static_cast<int64_t>(outW) * outH * outC) {
    return "RangeError: output buffer length is not height x width x channels";
  }
  const int32_t bx = p[kIBoxX], by = p[kIBoxY], bw = p[kIBoxW], bh = p[kIBoxH], kx = p[kIKx], ky = p[kIKy];
  if (bw < 1 || bh < 1 || bx < 0 || by < 0 || bx + static_cast<int64_t>(bw) > outW ||
      by + static_cast<int64_t>(bh) > outH) {
    return "RangeError: content box outside the output";
  }
  if (kx < 1 || ky < 1 || static_cast<int64_t>(j.xLen) != static_cast<int64_t>(bw) * kx ||
      static_cast<int64_t>(j.yLen) != static_cast<int64_t>(bh) * ky) {
    return "RangeError: resampling tables do not match the content box";
  }
  const int32_t srcC = (fmt == kGray || (fmt == kNv12 && outC == 1)) ? 1 : 3;
  if (p[kISrcC] != srcC) return "RangeError: resampled channels do not match the format";
  for (int k = 0; k < 3; ++k) {
    if (p[kIPerm0 + k] < 0 || p[kIPerm0 + k] > 2) return "RangeError: bad channel permutation";
  }
  for (int k = 0; k < 3; ++k) {
    const double l = j.f[kFLuma + k];
    if (!(l >= 0 && l <= 65536) || l != std::floor(l)) return "RangeError: luma weights must be integers 0-65536";
    if (!std::isfinite(j.f[kFA + k]) || !std::isfinite(j.f[kFB + k])) return "RangeError: non-finite mean/std";
  }
  if (!std::isfinite(j.f[kFPadR])) return "RangeError: non-finite padding";
  const int32_t lo = kind == kInt8 ? -128 : 0, hi = kind == kInt8 ? 127 : 255;
  if (kind != kFloat32 && (p[kIQMin] < lo || p[kIQMax] > hi || p[kIQMin] > p[kIQMax])) {
    return "RangeError: quantization range outside the output type";
  }
  if (kind != kFloat32 && !(j.f[kFQScale] > 0 && std::isfinite(static_cast<float>(j.f[kFQScale])))) {
    return "RangeError: quantization scale must be positive";
  }
  return {};
}

std::string ValidateTaps(const Job& j) {
  const int32_t w = j.i[kIWidth], h = j.i[kIHeight], kx = j.i[kIKx], ky = j.i[kIKy];
  // Weights in [0, kAxisOne] summing to at most kAxisOne keep every int32 sum below 2^31.
  auto axis = [](const int32_t* idx, const int32_t* wt, size_t n, int32_t k, int32_t limit) {
    for (size_t o = 0; o < n; o += k) {
      int64_t sum = 0;
      for (int32_t t = 0; t < k; ++t) {
        if (idx[o + t] < 0 || idx[o + t] >= limit || wt[o + t] < 0 || wt[o + t] > kAxisOne) return false;
        sum += wt[o + t];
      }
      if (sum > kAxisOne) return false;
    }
    return true;
  };
  if (!axis(j.xIdx, j.xW, j.xLen, kx, w)) return "RangeError: x taps outside the frame or bad weights";
  if (!axis(j.yIdx, j.yW, j.yLen, ky, h)) return "RangeError: y taps outside the frame or bad weights";
  return {};
}

std::string Validate(const Job& j) {
  std::string problem = ValidateShape(j);
  return problem.empty() ? ValidateTaps(j) : problem;
}

void Run(const Job& j) {
  std::vector<int32_t> scratch;
  Run(j, scratch);
}

void Run(const Job& j, std::vector<int32_t>& acc) {
  const int32_t* p = j.i;
  const int32_t fmt = p[kIFormat], height = p[kIHeight], stride = p[kIStride];
  const int32_t outW = p[kIOutW], outH = p[kIOutH], outC = p[kIOutC];
  const int32_t bx = p[kIBoxX], by = p[kIBoxY], bw = p[kIBoxW], bh = p[kIBoxH], ky = p[kIKy];
  const int32_t srcC = p[kISrcC];
  const bool nchw = p[kINchw] != 0;
  const size_t colStep = nchw ? 1 : outC;
  const size_t rowStep = static_cast<size_t>(outW) * colStep;
  const size_t chanStep = nchw ? static_cast<size_t>(outW) * outH : 1;
  const Writer out(j);

  if (bw != outW || bh != outH) {
    const double pad = j.f[kFPadR];
    for (int32_t oy = 0; oy < outH; ++oy) {
      const bool inside = oy >= by && oy < by + bh;
      for (int32_t ox = 0; ox < outW; ++ox) {
        if (inside && ox >= bx && ox < bx + bw) continue;
        for (int c = 0; c < outC; ++c) out.Put(oy * rowStep + ox * colStep + c * chanStep, c, pad);
      }
    }
  }

  // Columns the x taps read.
  const int32_t* xIdx = j.xIdx;
  const int32_t* xW = j.xW;
  const int32_t kx = p[kIKx];
  int32_t x0 = xIdx[0], x1 = xIdx[0];
  for (size_t t = 1; t < j.xLen; ++t) {
    x0 = std::min(x0, xIdx[t]);
    x1 = std::max(x1, xIdx[t]);
  }
  const size_t span = static_cast<size_t>(x1 - x0 + 1);
  acc.resize(span * srcC);
  const int64_t l0 = static_cast<int64_t>(j.f[kFLuma]), l1 = static_cast<int64_t>(j.f[kFLuma + 1]),
                l2 = static_cast<int64_t>(j.f[kFLuma + 2]);
  const int32_t perm[3] = {p[kIPerm0], p[kIPerm1], p[kIPerm2]};
  const size_t bpp = (fmt == kRgb || fmt == kBgr) ? 3 : 1;
  const uint8_t* uvPlane = j.src + static_cast<size_t>(stride) * height;
  for (int32_t oy = 0; oy < bh; ++oy) {
    std::fill(acc.begin(), acc.end(), 0);
    for (int32_t t = oy * ky, e = t + ky; t < e; ++t) {
      const int32_t wy = j.yW[t];
      if (wy == 0) continue;
      const int32_t y = j.yIdx[t];
      const uint8_t* row = j.src + static_cast<size_t>(stride) * y + bpp * x0;
      if (fmt != kNv12) AddRow(acc.data(), row, wy, span * bpp);
      else if (srcC == 1) AddRowNv12Gray(acc.data(), row, wy, span);
      else AddRowNv12Rgb(acc.data(), row, uvPlane + static_cast<size_t>(stride) * (y >> 1), wy, span, x0);
    }
    const size_t rowBase = (by + oy) * rowStep + bx * colStep;
    const int32_t* idx = xIdx;
    const int32_t* w = xW;
    for (int32_t ox = 0; ox < bw; ++ox, idx += kx, w += kx) {
      const size_t i = rowBase + ox * colStep;
      if (srcC == 1) {
        int32_t s = 0;
        for (int32_t t = 0; t < kx; ++t) s += w[t] * acc[idx[t] - x0];
        for (int c = 0; c < outC; ++c) out.Put(i + c * chanStep, c, s);
        continue;
      }
      int32_t s[3] = {0, 0, 0};
      for (int32_t t = 0; t < kx; ++t) {
        const int32_t* a = &acc[3 * (idx[t] - x0)];
        s[0] += w[t] * a[0];
        s[1] += w[t] * a[1];
        s[2] += w[t] * a[2];
      }
      if (outC == 1) {
        // Exact: each term < 2^47, the sum < 2^53.
        out.Put(i, 0, static_cast<double>(l0 * s[0] + l1 * s[1] + l2 * s[2]));
      } else {
        for (int c = 0; c < 3; ++c) out.Put(i + c * chanStep, c, s[perm[c]]);
      }
    }
  }
}

}  // namespace cascade
