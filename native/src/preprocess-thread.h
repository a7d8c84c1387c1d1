// A persistent preprocessing thread with a low-latency hand-off, for the device's double buffer.
//
// The libuv path (addon.cc PreprocessWorker) costs tens of microseconds per frame in dispatch,
// wake-up and completion delivered through the event loop, as much as the ~0.1 ms kernel and the
// inference it overlaps with. Here one thread is created per preprocessor and kept:
//
//   Start(job)  [caller]  publishes the job through an atomic counter (a futex wake only when the
//                         thread is asleep) and returns at once;
//   Wait()      [caller]  spins for up to spinNs on the completion counter, then blocks on a
//                         condition variable until the job is done.
//
// So the caller runs Start(n+1), infers frame n, then Wait()s only for whatever remains of the
// preprocessing. After a job, the thread itself spins for up to idleSpinNs for the next one
// before it sleeps. Spinning uses the CPU pause hint and yields the core every 5 µs (see
// preprocess-thread.cc); 0 disables either spin. Why spin at all: waking a sleeping thread cost
// 15–30 µs here, and 100–300 µs when its (virtual) CPU had gone idle, against ~0.1 µs spinning.
//
// Lock-free fast path, lost-wake-up-free slow path: each side stores its counter and then reads
// the other side's "asleep" flag (all sequentially consistent), and a sleeper sets its flag and
// re-checks the counter while holding the mutex it waits on, so at least one side sees the
// other (Dekker), and a notification cannot slip in between the check and the wait.
//
// One caller thread drives an instance (the Node main thread through addon.cc); no Node-API
// here, so the class is tested by itself under AddressSanitizer and ThreadSanitizer as well
// (native/test/preprocess-thread-stress.cc, native/stress.mjs).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "preprocess.h"

namespace cascade {

class PreprocessThread {
 public:
  // Starts the thread. spinNs: how long Wait() spins before it blocks; idleSpinNs: how long the
  // thread spins for the next job before it sleeps.
  PreprocessThread(int64_t spinNs, int64_t idleSpinNs);
  // Close()s: waits for a running job, then stops and joins the thread.
  ~PreprocessThread();
  PreprocessThread(const PreprocessThread&) = delete;
  PreprocessThread& operator=(const PreprocessThread&) = delete;

  // Hands a validated job to the thread. The caller keeps every buffer of the job alive and
  // unchanged until Wait() returns. Returns false (nothing started) when a job is already
  // running or after Close().
  bool Start(const Job& job);

  // Outcome of one job.
  struct Result {
    bool ok = true;
    std::string error;        // when !ok: what the kernel threw
    int64_t startToDoneNs = 0;  // Start() → the thread finished the job (hand-off + kernel)
    int64_t runNs = 0;          // the kernel alone
  };

  // Blocks until the started job is done. Returns false when no job is pending.
  bool Wait(Result* out);

  // True between Start() and Wait().
  bool Busy() const { return pending_; }

  // Waits for a running job (its result is dropped), then stops and joins the thread. Idempotent.
  void Close();

  // Start() → Wait() calls that found the job done while spinning, and those that had to block.
  uint64_t spinHits() const { return spinHits_; }
  uint64_t blocks() const { return blocks_; }

 private:
  void Loop();

  const int64_t spinNs_;
  const int64_t idleSpinNs_;
  std::mutex mu_;
  std::condition_variable jobCv_;   // the thread sleeps here for a job
  std::condition_variable doneCv_;  // the caller sleeps here for completion
  std::atomic<uint64_t> requested_{0};  // job number published by Start()
  std::atomic<uint64_t> done_{0};       // job number the thread finished
  std::atomic<bool> threadAsleep_{false};
  std::atomic<bool> callerAsleep_{false};
  std::atomic<bool> stop_{false};
  // Written by the caller before publishing requested_, read by the thread after seeing it.
  Job job_;
  int64_t startNs_ = 0;
  // Written by the thread before publishing done_, read by the caller after seeing it.
  bool ok_ = true;
  std::string error_;
  int64_t doneNs_ = 0;
  int64_t runNs_ = 0;
  // The kernel's column accumulators, kept between jobs (no allocation per frame).
  std::vector<int32_t> scratch_;
  // Caller-side state.
  bool pending_ = false;
  bool closed_ = false;
  uint64_t spinHits_ = 0;
  uint64_t blocks_ = 0;
  std::thread thread_;  // last: started once every other member is constructed
};

// CLOCK_MONOTONIC in nanoseconds (steady_clock).
int64_t MonotonicNs();

}  // namespace cascade
