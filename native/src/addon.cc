// Node-API surface of the preprocessing kernel (cascade_native.node).
//
//   preprocessSync(src, out, xIdx, xW, yIdx, yW, ints, floats): undefined   [sync]
//   preprocess(src, out, xIdx, xW, yIdx, yW, ints, floats): Promise<void>   [async, libuv pool]
//   info: { napiVersion, sanitizers }
//
// Arguments are validated in TypeScript (native/preprocess.ts); they are checked again here
// (types, then preprocess.cc Validate) so that a bad call through the raw binding throws a
// TypeError/RangeError with code NATIVE_ERR_INVALID_ARG instead of touching memory it must not.
// The async form keeps references to every buffer until the work completes; scalar parameters
// are copied before it returns.
#include <napi.h>

#include <string>

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

Napi::TypedArray TypedArg(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type,
                          const char* name, const char* typeName) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type) {
    ThrowTyped(info.Env(), std::string("TypeError: argument ") + std::to_string(i) + " (" + name + ") must be a " +
                               typeName);
  }
  return info[i].As<Napi::TypedArray>();
}

template <typename T>
const T* DataOf(Napi::TypedArray a) {
  return reinterpret_cast<const T*>(static_cast<const uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
}

struct Args {
  cascade::Job job;
  Napi::Value values[6];  // src, out, xIdx, xW, yIdx, yW
};

Args Parse(const Napi::CallbackInfo& info) {
  Args a;
  cascade::Job& j = a.job;
  auto src = TypedArg(info, 0, napi_uint8_array, "src", "Uint8Array");
  if (!info[1].IsTypedArray()) ThrowTyped(info.Env(), "TypeError: argument 1 (out) must be a typed array");
  auto out = info[1].As<Napi::TypedArray>();
  auto xIdx = TypedArg(info, 2, napi_int32_array, "xIdx", "Int32Array");
  auto xW = TypedArg(info, 3, napi_int32_array, "xW", "Int32Array");
  auto yIdx = TypedArg(info, 4, napi_int32_array, "yIdx", "Int32Array");
  auto yW = TypedArg(info, 5, napi_int32_array, "yW", "Int32Array");
  auto ints = TypedArg(info, 6, napi_int32_array, "ints", "Int32Array");
  auto floats = TypedArg(info, 7, napi_float64_array, "floats", "Float64Array");
  if (ints.ElementLength() != cascade::kIntParamCount || floats.ElementLength() != cascade::kFloatParamCount) {
    ThrowTyped(info.Env(), "RangeError: parameter arrays have the wrong length (binding and loader out of step?)");
  }
  if (xIdx.ElementLength() != xW.ElementLength() || yIdx.ElementLength() != yW.ElementLength()) {
    ThrowTyped(info.Env(), "RangeError: tap index and weight tables differ in length");
  }
  const int32_t* ip = DataOf<int32_t>(ints);
  for (int k = 0; k < cascade::kIntParamCount; ++k) j.i[k] = ip[k];
  const double* fp = DataOf<double>(floats);
  for (int k = 0; k < cascade::kFloatParamCount; ++k) j.f[k] = fp[k];
  static const napi_typedarray_type kOutTypes[] = {napi_float32_array, napi_uint8_array, napi_int8_array};
  const int32_t kind = j.i[cascade::kIOutKind];
  if (kind < 0 || kind > 2 || out.TypedArrayType() != kOutTypes[kind]) {
    ThrowTyped(info.Env(), "TypeError: out's type does not match the output kind (Float32Array, Uint8Array, Int8Array)");
  }
  j.src = DataOf<uint8_t>(src);
  j.srcLen = src.ElementLength();
  j.out = const_cast<uint8_t*>(DataOf<uint8_t>(out));
  j.outLen = out.ElementLength();
  j.xIdx = DataOf<int32_t>(xIdx);
  j.xW = DataOf<int32_t>(xW);
  j.xLen = xIdx.ElementLength();
  j.yIdx = DataOf<int32_t>(yIdx);
  j.yW = DataOf<int32_t>(yW);
  j.yLen = yIdx.ElementLength();
  const std::string problem = cascade::Validate(j);
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("preprocessSync", Napi::Function::New(env, PreprocessSync, "preprocessSync"));
  exports.Set("preprocess", Napi::Function::New(env, Preprocess, "preprocess"));
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
