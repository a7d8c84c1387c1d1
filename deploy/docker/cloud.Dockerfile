# syntax=docker/dockerfile:1.7
# Cloud teacher image (KServe v2 HTTP, onnxruntime CPU EP). Build from the repository root:
#
#   docker build -f deploy/docker/cloud.Dockerfile -t edge-cascade/cloud:0.1.0 .
#
# Two stages: `build` has the compiler for the native preprocessing addon (its failure is not
# fatal: the TypeScript preprocessor takes over, see native/build.mjs); the runtime stage has no
# compiler, no npm cache, no training stack, and runs as the unprivileged `node` user (uid 1000)
# over root-owned, read-only application files.
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# postinstall builds native/ (cmake-js), so its sources come before `npm ci`.
COPY native/ native/
# ONNXRUNTIME_NODE_INSTALL=skip: the CPU image needs no CUDA EP download.
RUN ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --no-audit --no-fund \
 # Runtime code never imports TensorFlow.js (training only): dropping it saves ~290 MB and turns
 # an accidental import into a start-up failure instead of a silent 300 MB image.
 && rm -rf node_modules/@tensorflow node_modules/cmake-js \
 && rm -rf native/build/CMakeFiles native/build/*.cmake \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    CASCADE_CLOUD_HTTP_PORT=8081
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/native native
COPY package.json ./
COPY cascade/ cascade/
COPY models/ models/
COPY cloud/ cloud/
# The hard-example log lives on a volume the node user can write.
RUN mkdir -p /var/lib/cascade/hard-examples && chown node:node /var/lib/cascade/hard-examples
VOLUME ["/var/lib/cascade/hard-examples"]
USER node
EXPOSE 8081
# Liveness only (/healthz): readiness (/readyz: model loaded, not draining) is
# for the orchestrator. Node 20 has fetch; the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.CASCADE_CLOUD_HTTP_PORT||8081)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "cascade/bin.mjs"]
CMD ["cloud"]
