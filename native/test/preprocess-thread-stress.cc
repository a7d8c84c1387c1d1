// Stress test of cascade::PreprocessThread on its own (no Node): many hand-offs with every mix of
// spinning and sleeping on both sides, late callers, a caller that closes with a job in flight,
// and instances destroyed without Close(). Built and run by native/sanitize.mjs under
// ThreadSanitizer (data races, lock misuse) and under AddressSanitizer + UBSan; a lost wake-up
// shows as a hang, which the script's timeout turns into a failure.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "../src/preprocess-thread.h"
#include "../src/preprocess.h"

namespace {

int failures = 0;

void Check(bool ok, const char* what, long i) {
  if (!ok && failures++ < 10) std::fprintf(stderr, "FAIL: %s (job %ld)\n", what, i);
}

// A 4x4 gray frame to 2x2 floats by 2-tap area resampling (the layout of native/preprocess.ts).
struct Case {
  std::vector<uint8_t> src = std::vector<uint8_t>(16);
  std::vector<float> out = std::vector<float>(4);
  std::vector<int32_t> idx{0, 1, 2, 3};
  std::vector<int32_t> w{1024, 1024, 1024, 1024};
  cascade::Job job;

  explicit Case(uint8_t seed) {
    for (int i = 0; i < 16; ++i) src[i] = static_cast<uint8_t>(seed + 10 * i);
    const int32_t ints[cascade::kIntParamCount] = {0, 4, 4, 4, 0, 2, 2, 1, 1, 0, 0,
                                                   2, 2, 2, 2, 1, 0, 1, 2, 0, 0, 255};
    const double floats[cascade::kFloatParamCount] = {1.0 / (1 << 22), 0, 0, 0, 0, 0, 19595, 38470, 7471, 0, 1};
    for (int k = 0; k < cascade::kIntParamCount; ++k) job.i[k] = ints[k];
    for (int k = 0; k < cascade::kFloatParamCount; ++k) job.f[k] = floats[k];
    job.src = src.data();
    job.srcLen = src.size();
    job.out = out.data();
    job.outLen = out.size();
    job.xIdx = idx.data();
    job.xW = w.data();
    job.xLen = idx.size();
    job.yIdx = idx.data();
    job.yW = w.data();
    job.yLen = idx.size();
  }
  // Output pixel (0, 0): the mean of the top-left 2x2 block.
  float Want() const { return static_cast<float>((src[0] + src[1] + src[4] + src[5]) / 4.0); }
};

void Busy(int64_t ns) {
  const int64_t end = cascade::MonotonicNs() + ns;
  while (cascade::MonotonicNs() < end) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  const long jobs = argc > 1 ? std::atol(argv[1]) : 20000;
  Case cases[2] = {Case(1), Case(2)};
  if (!cascade::Validate(cases[0].job).empty()) {
    std::fprintf(stderr, "FAIL: the test job does not validate: %s\n", cascade::Validate(cases[0].job).c_str());
    return 1;
  }
  const int64_t spins[][2] = {{0, 0}, {1000000, 0}, {0, 1000000}, {20000, 20000}, {1000000, 500000}};
  for (const auto& s : spins) {
    cascade::PreprocessThread t(s[0], s[1]);
    cascade::PreprocessThread::Result r;
    for (long i = 0; i < jobs; ++i) {
      Case& c = cases[i & 1];
      c.out[0] = -1;
      Check(t.Start(c.job), "Start accepted", i);
      Check(!t.Start(c.job), "a second Start refused while busy", i);
      // Now and then the caller is late, so that the thread has gone idle (or to sleep).
      if (i % 1000 == 999) Busy(300000);
      Check(t.Wait(&r), "Wait found the job", i);
      Check(r.ok && r.startToDoneNs >= r.runNs && r.runNs >= 0, "result", i);
      Check(c.out[0] == c.Want(), "output written before Wait returned", i);
    }
    Check(!t.Wait(&r), "Wait without a job refused", -1);
    Check(t.spinHits() + t.blocks() == static_cast<uint64_t>(jobs), "every wait counted", -1);
    std::printf("spin %lld/%lld ns: %llu spin hits, %llu blocks\n", static_cast<long long>(s[0]),
                static_cast<long long>(s[1]), static_cast<unsigned long long>(t.spinHits()),
                static_cast<unsigned long long>(t.blocks()));
    // Close with a job in flight: it completes first.
    cases[0].out[0] = -1;
    t.Start(cases[0].job);
    t.Close();
    Check(cases[0].out[0] == cases[0].Want(), "Close waited for the job in flight", -1);
    Check(!t.Start(cases[0].job), "Start after Close refused", -1);
    t.Close();
  }
  // Short-lived instances, some destroyed with a job in flight, some never used.
  for (int i = 0; i < 200; ++i) {
    cascade::PreprocessThread t(i % 3 == 0 ? 0 : 10000, i % 2 == 0 ? 0 : 10000);
    if (i % 4 != 0) t.Start(cases[i & 1].job);
    if (i % 4 == 1) t.Wait(nullptr);
  }
  if (failures > 0) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("ok: %ld jobs per spin setting\n", jobs);
  return 0;
}
