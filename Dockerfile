# syntax=docker/dockerfile:1
# The Heimdall function image. One image for every function; the stage is the argument:
#   docker build -t heimdall .                             onnxruntime on CPU
#   docker build --build-arg VARIANT=cuda -t heimdall:cuda .   + onnxruntime's CUDA 12 execution provider
#   docker run -p 8080:8080 heimdall validate              = heimdall function validate on $PORT
# No build step: tsx runs the TypeScript sources (a production dependency).
# Node 24 (LTS, maintained to April 2028): Node 20 left maintenance in April 2026. The sources also
# run on Node 20.19+ (package.json engines), what the CI machine has.
ARG NODE_VERSION=24
ARG VARIANT=cpu

# Production dependencies only, with the project's .npmrc (install scripts off: onnxruntime-node's
# CPU binaries ship in its package, and nothing is downloaded behind npm's back).
FROM node:${NODE_VERSION}-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev
# CUDA variant: run onnxruntime-node's own installer for its CUDA 12 provider libraries (from NuGet).
ARG VARIANT
RUN if [ "$VARIANT" = cuda ]; then ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js; fi

FROM node:${NODE_VERSION}-bookworm-slim AS runtime-cpu

# CUDA 12 and cuDNN 9, what onnxruntime 1.30's CUDA provider links against; node from the official image.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS runtime-cuda
COPY --from=deps /usr/local/bin/node /usr/local/bin/node

FROM runtime-${VARIANT}
ENV NODE_ENV=production PORT=8080
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY functions ./functions
COPY shared ./shared
COPY infra ./infra
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8080
# For plain Docker; on Knative the Service's probes call the same endpoints.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT}/health/readiness`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "bin/heimdall.js", "function"]
