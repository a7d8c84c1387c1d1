// Node-API surface of the TensorRT binding (cascade_tensorrt.node).
//
//   tensorrtVersion: string                                   TensorRT library version
//   deviceCount(): number                                     [sync]
//   deviceName(index): string                                 [sync]
//   loadEngine(options): Promise<Engine>                      [async] build or load from cache
//   Engine#run(ctx, input, n, output): Promise<void>          [async] one batch on context ctx
//   Engine#dispose(): void                                    [sync] idempotent
//   Engine#outputSize, #sampleSize, #contexts, #minBatch, #maxBatch, #fromCache, #precision
//
// Options are validated in TypeScript (native/tensorrt.ts). Errors: TypeError/RangeError with
// code NATIVE_ERR_INVALID_ARG for bad arguments, Error with NATIVE_ERR_TRT_BUILD for parse and
// build failures, NATIVE_ERR_TRT_RUNTIME for CUDA and enqueue failures.
#include <napi.h>

#include <memory>
#include <string>

#include "engine.h"

namespace {

using cascade::trt::Engine;
using cascade::trt::Error;

const char* CodeOf(Error::Kind k) {
  switch (k) {
    case Error::kArgs: return "NATIVE_ERR_INVALID_ARG";
    case Error::kBuild: return "NATIVE_ERR_TRT_BUILD";
    default: return "NATIVE_ERR_TRT_RUNTIME";
  }
}

Napi::Error ToJs(Napi::Env env, Error::Kind kind, const std::string& msg) {
  const std::string text = "cascade_tensorrt: " + msg;
  Napi::Error e = kind == Error::kArgs ? static_cast<Napi::Error>(Napi::RangeError::New(env, text))
                                       : Napi::Error::New(env, text);
  e.Set("code", Napi::String::New(env, CodeOf(kind)));
  return e;
}

[[noreturn]] void ThrowArg(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, "cascade_tensorrt: " + msg);
  e.Set("code", Napi::String::New(env, "NATIVE_ERR_INVALID_ARG"));
  throw e;
}

int IntProp(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) ThrowArg(o.Env(), std::string("options.") + key + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

std::string StrProp(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) ThrowArg(o.Env(), std::string("options.") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

struct AddonData {
  Napi::FunctionReference engineCtor;
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TensorRtEngine",
                       {
                           InstanceMethod<&EngineWrap::Run>("run"),
                           InstanceMethod<&EngineWrap::Dispose>("dispose"),
                           InstanceAccessor<&EngineWrap::OutputSize>("outputSize"),
                           InstanceAccessor<&EngineWrap::SampleSize>("sampleSize"),
                           InstanceAccessor<&EngineWrap::Contexts>("contexts"),
                           InstanceAccessor<&EngineWrap::MinBatch>("minBatch"),
                           InstanceAccessor<&EngineWrap::MaxBatch>("maxBatch"),
                           InstanceAccessor<&EngineWrap::FromCache>("fromCache"),
                           InstanceAccessor<&EngineWrap::Precision>("precision"),
                       });
  }
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {}
  void Attach(std::shared_ptr<Engine> e) {
    engine_ = std::move(e);
    outputSize_ = engine_->outputSize();
    sampleSize_ = engine_->sampleSize();
    contexts_ = engine_->contexts();
    minBatch_ = engine_->minBatch();
    maxBatch_ = engine_->maxBatch();
    fromCache_ = engine_->fromCache();
    precision_ = engine_->precision();
  }

 private:
  class RunWorker : public Napi::AsyncWorker {
   public:
    RunWorker(Napi::Env env, std::shared_ptr<Engine> e, int ctx, Napi::TypedArray in, int n, Napi::TypedArray out)
        : Napi::AsyncWorker(env, "cascade:tensorrt:run"),
          deferred_(Napi::Promise::Deferred::New(env)),
          engine_(std::move(e)),
          ctx_(ctx),
          n_(n),
          in_(reinterpret_cast<const float*>(static_cast<uint8_t*>(in.ArrayBuffer().Data()) + in.ByteOffset())),
          out_(reinterpret_cast<float*>(static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset())),
          inRef_(Napi::Persistent(static_cast<Napi::Value>(in))),
          outRef_(Napi::Persistent(static_cast<Napi::Value>(out))) {}
    Napi::Promise Promise() const { return deferred_.Promise(); }

   protected:
    void Execute() override {
      try {
        engine_->Run(ctx_, in_, n_, out_);
      } catch (const Error& e) {
        kind_ = e.kind;
        SetError(e.what());
      }
    }
    void OnOK() override { deferred_.Resolve(Env().Undefined()); }
    void OnError(const Napi::Error& e) override {
      deferred_.Reject(ToJs(Env(), kind_, e.Message()).Value());
    }

   private:
    Napi::Promise::Deferred deferred_;
    std::shared_ptr<Engine> engine_;  // keeps the engine alive past a dispose() during the run
    int ctx_, n_;
    const float* in_;
    float* out_;
    Napi::Reference<Napi::Value> inRef_, outRef_;
    Error::Kind kind_ = Error::kRuntime;
  };

  // [async]
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!engine_) throw ToJs(env, Error::kRuntime, "engine used after dispose()");
    if (info.Length() < 4 || !info[0].IsNumber() || !info[2].IsNumber() || !info[1].IsTypedArray() ||
        !info[3].IsTypedArray()) {
      ThrowArg(env, "run(ctx: number, input: Float32Array, n: number, output: Float32Array)");
    }
    auto in = info[1].As<Napi::TypedArray>();
    auto out = info[3].As<Napi::TypedArray>();
    if (in.TypedArrayType() != napi_float32_array || out.TypedArrayType() != napi_float32_array) {
      ThrowArg(env, "input and output must be Float32Array");
    }
    const int ctx = info[0].As<Napi::Number>().Int32Value();
    const int n = info[2].As<Napi::Number>().Int32Value();
    if (n < minBatch_ || n > maxBatch_ || in.ElementLength() != static_cast<size_t>(n) * sampleSize_ ||
        out.ElementLength() != static_cast<size_t>(n) * outputSize_ || ctx < 0 || ctx >= contexts_) {
      throw ToJs(env, Error::kArgs, "run: bad context, batch size or buffer lengths");
    }
    auto* w = new RunWorker(env, engine_, ctx, in, n, out);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  // [sync]
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    engine_.reset();  // freed now, or when the last in-flight run completes
    return info.Env().Undefined();
  }

  Napi::Value OutputSize(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), double(outputSize_)); }
  Napi::Value SampleSize(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), double(sampleSize_)); }
  Napi::Value Contexts(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), contexts_); }
  Napi::Value MinBatch(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), minBatch_); }
  Napi::Value MaxBatch(const Napi::CallbackInfo& i) { return Napi::Number::New(i.Env(), maxBatch_); }
  Napi::Value FromCache(const Napi::CallbackInfo& i) { return Napi::Boolean::New(i.Env(), fromCache_); }
  Napi::Value Precision(const Napi::CallbackInfo& i) { return Napi::String::New(i.Env(), precision_); }

  std::shared_ptr<Engine> engine_;
  size_t outputSize_ = 0, sampleSize_ = 0;
  int contexts_ = 0, minBatch_ = 0, maxBatch_ = 0;
  bool fromCache_ = false;
  std::string precision_;
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, cascade::trt::Options opts)
      : Napi::AsyncWorker(env, "cascade:tensorrt:load"),
        deferred_(Napi::Promise::Deferred::New(env)),
        opts_(std::move(opts)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      engine_ = Engine::Load(opts_);
    } catch (const Error& e) {
      kind_ = e.kind;
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object obj = env.GetInstanceData<AddonData>()->engineCtor.New({});
    EngineWrap::Unwrap(obj)->Attach(std::move(engine_));
    deferred_.Resolve(obj);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(ToJs(Env(), kind_, e.Message()).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  cascade::trt::Options opts_;
  std::shared_ptr<Engine> engine_;
  Error::Kind kind_ = Error::kBuild;
};

// [async]
Napi::Value LoadEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) ThrowArg(env, "loadEngine(options: object)");
  Napi::Object o = info[0].As<Napi::Object>();
  cascade::trt::Options opts;
  Napi::Value onnx = o.Get("onnx");
  if (!onnx.IsTypedArray() || onnx.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArg(env, "options.onnx must be a Uint8Array");
  }
  auto bytes = onnx.As<Napi::Uint8Array>();
  opts.onnx.assign(bytes.Data(), bytes.Data() + bytes.ElementLength());  // copied: the build runs off-thread
  opts.cachePath = StrProp(o, "cachePath");
  opts.device = IntProp(o, "device");
  opts.int8 = o.Get("int8").ToBoolean();
  opts.fp16 = o.Get("fp16").ToBoolean();
  opts.inputName = StrProp(o, "inputName");
  opts.outputName = StrProp(o, "outputName");
  Napi::Value dims = o.Get("sampleDims");
  if (!dims.IsArray()) ThrowArg(env, "options.sampleDims must be an array");
  auto arr = dims.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value d = arr.Get(i);
    if (!d.IsNumber() || d.As<Napi::Number>().Int64Value() < 1) ThrowArg(env, "options.sampleDims: positive integers");
    opts.sampleDims.push_back(d.As<Napi::Number>().Int64Value());
  }
  opts.minBatch = IntProp(o, "minBatch");
  opts.optBatch = IntProp(o, "optBatch");
  opts.maxBatch = IntProp(o, "maxBatch");
  opts.contexts = IntProp(o, "contexts");
  Napi::Value ws = o.Get("workspaceBytes");
  if (!ws.IsNumber() || ws.As<Napi::Number>().DoubleValue() < 1) ThrowArg(env, "options.workspaceBytes must be positive");
  opts.workspaceBytes = static_cast<size_t>(ws.As<Napi::Number>().DoubleValue());
  auto* w = new LoadWorker(env, std::move(opts));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// [sync]
Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cascade::trt::DeviceCount());
}

// [sync]
Napi::Value DeviceName(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowArg(info.Env(), "deviceName(index: number)");
  try {
    return Napi::String::New(info.Env(), cascade::trt::DeviceName(info[0].As<Napi::Number>().Int32Value()));
  } catch (const Error& e) {
    throw ToJs(info.Env(), e.kind, e.what());
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->engineCtor = Napi::Persistent(EngineWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("tensorrtVersion", Napi::String::New(env, cascade::trt::Version()));
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount, "deviceCount"));
  exports.Set("deviceName", Napi::Function::New(env, DeviceName, "deviceName"));
  exports.Set("loadEngine", Napi::Function::New(env, LoadEngine, "loadEngine"));
  return exports;
}

}  // namespace

NODE_API_MODULE(cascade_tensorrt, Init)
