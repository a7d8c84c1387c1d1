// Node-API surface of the preprocessing kernel (cascade_native.node).
//
//   preprocessSync(src, out, xIdx, xW, yIdx, yW, ints, floats): undefined   [sync]
//   preprocess(src, out, xIdx, xW, yIdx, yW, ints, floats): Promise<void>   [async, libuv pool]
//   new PreprocessThread(spinNs, idleSpinNs, stats: Float64Array(4))          [persistent thread]
//     .start(src, out, xIdx, xW, yIdx, yW, ints, floats): undefined           [sync, hands off]
//     .wait(): undefined; stats = [ms start → done, kernel ms, spin hits, blocks]  [sync, blocks]
//     .close(): undefined, .busy
//   info: { napiVersion, sanitizers }
//
// Arguments are validated in TypeScript (native/preprocess.ts); they are checked again here
// (types, then preprocess.cc Validate) so that a bad call through the raw binding throws a
// TypeError/RangeError with code NATIVE_ERR_INVALID_ARG instead of touching memory it must not.
// The async form keeps references to every buffer until the work completes; scalar parameters
// are copied before it returns.
#include <napi.h>

#include <cstring>
#include <memory>
#include <vector>
#include <string>

#include "preprocess-thread.h"
#include "preprocess.h"

namespace {

constexpr const char* kArgCode = "NATIVE_ERR_INVALID_ARG";

[[noreturn]] void ThrowTyped(Napi::Env env, const std::string& text) {
  // text is "TypeError: ..." or "RangeError: ..." (see cascade::Validate).
  const bool range = text.rfind("RangeError: ", 0) == 0;
  const std::string msg = "cascade_native: " + text.substr(text.find(": ") + 2);
  Napi::Error err = range ? static_cast<Napi::Error>(Napi::RangeError::New(env, msg))
                          : static_cast<Napi::Error>(Napi::TypeError::New(env, msg));
  err.Set("code", Napi::String::New(env, kArgCode));
  throw err;
}

// One typed-array argument, read with a single napi_get_typedarray_info (node-addon-api's
// accessors make one call per property: ~40 calls per job instead of 8).
struct View {
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void* data = nullptr;  // already offset to the first element
};

bool ReadView(napi_env env, napi_value v, View* out) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_value buffer;
  size_t offset = 0;
  // Asking for the buffer moves a small on-heap array's bytes off the heap, so `data` stays put.
  return napi_get_typedarray_info(env, v, &out->type, &out->length, &out->data, &buffer, &offset) == napi_ok;
}

View TypedArg(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, const char* name,
              const char* typeName) {
  View view;
  if (info.Length() <= i || !ReadView(info.Env(), info[i], &view) || view.type != type) {
    ThrowTyped(info.Env(), std::string("TypeError: argument ") + std::to_string(i) + " (" + name + ") must be a " +
                               typeName);
  }
  return view;
}

struct Args {
  cascade::Job job;
  Napi::Value values[6];  // src, out, xIdx, xW, yIdx, yW
};

// Reads and checks the arguments. With `taps` false the O(taps) check of the resampling tables
// is left to the caller (PreprocessThreadWrap checks its own copy of them).
Args Parse(const Napi::CallbackInfo& info, bool taps = true) {
  Args a;
  cascade::Job& j = a.job;
  const View src = TypedArg(info, 0, napi_uint8_array, "src", "Uint8Array");
  View out;
  if (info.Length() <= 1 || !ReadView(info.Env(), info[1], &out)) {
    ThrowTyped(info.Env(), "TypeError: argument 1 (out) must be a typed array");
  }
  const View xIdx = TypedArg(info, 2, napi_int32_array, "xIdx", "Int32Array");
  const View xW = TypedArg(info, 3, napi_int32_array, "xW", "Int32Array");
  const View yIdx = TypedArg(info, 4, napi_int32_array, "yIdx", "Int32Array");
  const View yW = TypedArg(info, 5, napi_int32_array, "yW", "Int32Array");
  const View ints = TypedArg(info, 6, napi_int32_array, "ints", "Int32Array");
  const View floats = TypedArg(info, 7, napi_float64_array, "floats", "Float64Array");
  if (ints.length != cascade::kIntParamCount || floats.length != cascade::kFloatParamCount) {
    ThrowTyped(info.Env(), "RangeError: parameter arrays have the wrong length (binding and loader out of step?)");
  }
  if (xIdx.length != xW.length || yIdx.length != yW.length) {
    ThrowTyped(info.Env(), "RangeError: tap index and weight tables differ in length");
  }
  const int32_t* ip = static_cast<const int32_t*>(ints.data);
  for (int k = 0; k < cascade::kIntParamCount; ++k) j.i[k] = ip[k];
  const double* fp = static_cast<const double*>(floats.data);
  for (int k = 0; k < cascade::kFloatParamCount; ++k) j.f[k] = fp[k];
  static const napi_typedarray_type kOutTypes[] = {napi_float32_array, napi_uint8_array, napi_int8_array};
  const int32_t kind = j.i[cascade::kIOutKind];
  if (kind < 0 || kind > 2 || out.type != kOutTypes[kind]) {
    ThrowTyped(info.Env(), "TypeError: out's type does not match the output kind (Float32Array, Uint8Array, Int8Array)");
  }
  j.src = static_cast<const uint8_t*>(src.data);
  j.srcLen = src.length;
  j.out = out.data;
  j.outLen = out.length;
  j.xIdx = static_cast<const int32_t*>(xIdx.data);
  j.xW = static_cast<const int32_t*>(xW.data);
  j.xLen = xIdx.length;
  j.yIdx = static_cast<const int32_t*>(yIdx.data);
  j.yW = static_cast<const int32_t*>(yW.data);
  j.yLen = yIdx.length;
  const std::string problem = taps ? cascade::Validate(j) : cascade::ValidateShape(j);
  if (!problem.empty()) ThrowTyped(info.Env(), problem);
  for (int k = 0; k < 6; ++k) a.values[k] = info[k];
  return a;
}

// [sync]
Napi::Value PreprocessSync(const Napi::CallbackInfo& info) {
  Args a = Parse(info);
  cascade::Run(a.job);
  return info.Env().Undefined();
}

class PreprocessWorker : public Napi::AsyncWorker {
 public:
  PreprocessWorker(Napi::Env env, const Args& a)
      : Napi::AsyncWorker(env, "cascade:preprocess"), deferred_(Napi::Promise::Deferred::New(env)), job_(a.job) {
    // The buffers stay reachable (and so unmoved and uncollected) until the work completes.
    for (int k = 0; k < 6; ++k) refs_[k] = Napi::Persistent(a.values[k]);
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override { cascade::Run(job_); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  cascade::Job job_;
  Napi::Reference<Napi::Value> refs_[6];
};

// [async]
Napi::Value Preprocess(const Napi::CallbackInfo& info) {
  Args a = Parse(info);
  auto* worker = new PreprocessWorker(info.Env(), a);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// [persistent thread] One cascade::PreprocessThread per object: start() validates and hands the
// job over without an event-loop turn, wait() blocks the calling thread until it is done. While
// a job runs, its frame and output buffers sit in a strongly referenced holder array (set per
// start(), so no reference is created per frame): even if this object is collected mid-job, they
// stay alive until the finalizer has waited for the job; the resampling tables are copied. Like
// the async form, the buffers must not be transferred or resized until wait() returns. wait()
// reports through the caller's Float64Array rather than a return value: a double returned to JS
// would be a heap allocation per frame.
class PreprocessThreadWrap : public Napi::ObjectWrap<PreprocessThreadWrap> {
 public:
  // Layout of the stats Float64Array.
  enum Stat : uint32_t { kStartToDoneMs, kRunMs, kSpinHits, kBlocks, kStatCount };

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PreprocessThread",
                       {InstanceMethod<&PreprocessThreadWrap::Start>("start"),
                        InstanceMethod<&PreprocessThreadWrap::Wait>("wait"),
                        InstanceMethod<&PreprocessThreadWrap::Close>("close"),
                        InstanceAccessor<&PreprocessThreadWrap::Busy>("busy")});
  }

  // new PreprocessThread(spinNs, idleSpinNs, stats: Float64Array(4))
  explicit PreprocessThreadWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PreprocessThreadWrap>(info) {
    Napi::Env env = info.Env();
    int64_t spin[2] = {0, 0};
    for (size_t k = 0; k < 2; ++k) {
      const double v = info.Length() > k && info[k].IsNumber() ? info[k].As<Napi::Number>().DoubleValue() : -1;
      if (!(v >= 0 && v <= 1e9)) {
        ThrowTyped(env, std::string("RangeError: argument ") + std::to_string(k) +
                            (k == 0 ? " (spinNs)" : " (idleSpinNs)") + " must be a number of nanoseconds 0-1e9");
      }
      spin[k] = static_cast<int64_t>(v);
    }
    View stats;
    if (info.Length() < 3 || !ReadView(env, info[2], &stats) || stats.type != napi_float64_array ||
        stats.length < kStatCount) {
      ThrowTyped(env, "TypeError: argument 2 (stats) must be a Float64Array of at least 4 elements");
    }
    Napi::Array holder = Napi::Array::New(env, 3);
    holder.Set(2u, info[2]);
    holder_ = Napi::Persistent(holder);
    try {
      thread_ = std::make_unique<cascade::PreprocessThread>(spin[0], spin[1]);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, std::string("cascade_native: cannot start the preprocessing thread: ") + e.what());
    }
  }

  ~PreprocessThreadWrap() override {
    // Waits for a running job: its buffers (in holder_) must outlive it.
    if (thread_) thread_->Close();
  }

 private:
  // [sync] Validates like preprocessSync, then hands the job to the thread.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!thread_) throw Napi::Error::New(env, "cascade_native: PreprocessThread.start() after close()");
    if (thread_->Busy()) {
      throw Napi::Error::New(env, "cascade_native: PreprocessThread.start() while a job runs (call wait() first)");
    }
    Args a = Parse(info, false);
    cascade::Job& j = a.job;
    // The thread reads copies of the resampling tables, so JS can neither change nor free them
    // under it. They are re-checked only when they (or the frame size they index) change: a
    // steady stream pays a compare instead of the O(taps) check.
    const int32_t key[4] = {j.i[cascade::kIWidth], j.i[cascade::kIHeight], j.i[cascade::kIKx], j.i[cascade::kIKy]};
    bool changed = !tablesValid_ || std::memcmp(key, tableKey_, sizeof key) != 0;
    changed = Sync(xIdx_, j.xIdx, j.xLen) || changed;
    changed = Sync(xW_, j.xW, j.xLen) || changed;
    changed = Sync(yIdx_, j.yIdx, j.yLen) || changed;
    changed = Sync(yW_, j.yW, j.yLen) || changed;
    j.xIdx = xIdx_.data();
    j.xW = xW_.data();
    j.yIdx = yIdx_.data();
    j.yW = yW_.data();
    if (changed) {
      tablesValid_ = false;
      const std::string problem = cascade::ValidateTaps(j);
      if (!problem.empty()) ThrowTyped(env, problem);
      std::memcpy(tableKey_, key, sizeof key);
      tablesValid_ = true;
    }
    Napi::Array holder = holder_.Value();
    holder.Set(0u, a.values[0]);
    holder.Set(1u, a.values[1]);
    thread_->Start(j);
    return env.Undefined();
  }

  // [sync] Blocks until the job is done; writes stats (ms start → done, kernel ms, counters).
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!thread_ || !thread_->Wait(&result_)) {
      throw Napi::Error::New(env, "cascade_native: PreprocessThread.wait() without a started job");
    }
    View stats;
    // Re-read each time: the array may have been transferred (detached) meanwhile.
    if (ReadView(env, holder_.Value().Get(2u), &stats) && stats.length >= kStatCount) {
      double* d = static_cast<double*>(stats.data);
      d[kStartToDoneMs] = static_cast<double>(result_.startToDoneNs) / 1e6;
      d[kRunMs] = static_cast<double>(result_.runNs) / 1e6;
      d[kSpinHits] = static_cast<double>(thread_->spinHits());
      d[kBlocks] = static_cast<double>(thread_->blocks());
    }
    if (!result_.ok) throw Napi::Error::New(env, "cascade_native: preprocessing failed: " + result_.error);
    return env.Undefined();
  }

  // [sync] Waits for a running job, stops and joins the thread, drops the buffers. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (thread_) {
      thread_->Close();
      thread_.reset();
      Napi::Array holder = holder_.Value();
      holder.Set(0u, info.Env().Undefined());
      holder.Set(1u, info.Env().Undefined());
    }
    return info.Env().Undefined();
  }

  Napi::Value Busy(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), thread_ && thread_->Busy());
  }

  // Copies `src` into `dst` unless equal; true when it copied.
  static bool Sync(std::vector<int32_t>& dst, const int32_t* src, size_t n) {
    if (dst.size() == n && std::memcmp(dst.data(), src, n * sizeof(int32_t)) == 0) return false;
    dst.assign(src, src + n);
    return true;
  }

  std::unique_ptr<cascade::PreprocessThread> thread_;
  Napi::Reference<Napi::Array> holder_;  // [src, out] of the job in flight, the stats array
  std::vector<int32_t> xIdx_, xW_, yIdx_, yW_;
  int32_t tableKey_[4] = {0, 0, 0, 0};
  bool tablesValid_ = false;
  cascade::PreprocessThread::Result result_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("preprocessSync", Napi::Function::New(env, PreprocessSync, "preprocessSync"));
  exports.Set("preprocess", Napi::Function::New(env, Preprocess, "preprocess"));
  exports.Set("PreprocessThread", PreprocessThreadWrap::Define(env));
  Napi::Object info = Napi::Object::New(env);
  info.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
#ifdef CASCADE_SANITIZE
  info.Set("sanitizers", Napi::String::New(env, "address,undefined"));
#else
  info.Set("sanitizers", Napi::String::New(env, ""));
#endif
  info.Set("intParams", Napi::Number::New(env, cascade::kIntParamCount));
  info.Set("floatParams", Napi::Number::New(env, cascade::kFloatParamCount));
  exports.Set("info", info);
  return exports;
}

}  // namespace

NODE_API_MODULE(cascade_native, Init)
