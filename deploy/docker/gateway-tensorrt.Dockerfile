# syntax=docker/dockerfile:1.7
# MEC gateway image for NVIDIA GPUs: the native TensorRT engine binding (native/tensorrt) and
# onnxruntime's CUDA/TensorRT execution providers, on NVIDIA's TensorRT base image.
#
#   docker build -f deploy/docker/gateway-tensorrt.Dockerfile -t edge-cascade/gateway:0.1.0-trt .
#   docker run --gpus all ... edge-cascade/gateway:0.1.0-trt
#
# UNVERIFIED: this file has not been built or run by the project's CI (no GPU and no container
# runtime there). What it relies on, so that a failure is easy to place:
#   - nvcr.io/nvidia/tensorrt:24.08-py3 ships TensorRT 10.3, CUDA 12.6 and cuDNN 9 on Ubuntu
#     22.04, with NvInfer.h under /usr/include/x86_64-linux-gnu and libnvinfer under
#     /usr/lib/x86_64-linux-gnu (native/tensorrt/tensorrt.cmake searches those suffixes).
#   - Node.js 20 comes from the official node image (its binaries need glibc >= 2.28).
#   - ONNXRUNTIME_NODE_INSTALL=cuda12 makes onnxruntime-node's install script fetch the CUDA 12
#     execution-provider libraries (the npm package bundles the CPU EP only); that needs network
#     access at build time.
# At start the gateway's engine registry (models/) logs which engine it picked and why; expect
# "native TensorRT" with the -trt model flavour (models/gateway/gateway-int8-trt.onnx).
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS node

FROM ${TRT_IMAGE} AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && apt-get update \
 && apt-get install -y --no-install-recommends g++ make cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY native/ native/
ENV TENSORRT_ROOT=/usr CUDAToolkit_ROOT=/usr/local/cuda
RUN ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci --omit=dev --no-audit --no-fund \
 # Fail the image, not the first request, when the TensorRT binding did not build.
 && npm run build:native \
 && test -f native/build/Release/cascade_tensorrt.node \
 && rm -rf node_modules/@tensorflow node_modules/cmake-js native/build/CMakeFiles \
 && npm cache clean --force

# The TensorRT runtime libraries come with the same base image; there is no slim runtime variant
# of it, so the runtime stage repeats the base and drops the compiler, the npm cache and the
# training stack.
FROM ${TRT_IMAGE} AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN groupadd --gid 10001 cascade && useradd --uid 10001 --gid cascade --no-create-home cascade
ENV NODE_ENV=production \
    CASCADE_GATEWAY_HTTP_PORT=8080 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/native native
COPY package.json ./
COPY cascade/ cascade/
COPY models/ models/
COPY gateway/ gateway/
# TensorRT engine plans are built on first start for the GPU at hand and cached here.
RUN mkdir -p /var/cache/cascade && chown cascade:cascade /var/cache/cascade
VOLUME ["/var/cache/cascade"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.CASCADE_GATEWAY_HTTP_PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "cascade/bin.mjs"]
CMD ["gateway"]
