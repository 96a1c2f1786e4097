# syntax=docker/dockerfile:1
# The gateway image: the gateway plus the built-in plugins (probing, retrieval-heads, sae,
# steering) in /app/plugins. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t interpmesh/gateway:0.1.0 .
#
# Both stages are Ubuntu 24.04 "noble": its libstdc++ (GCC 14) exports GLIBCXX_3.4.32, so
# TorchSharp's libLibTorchSharp.so loads as shipped. build/torchsharp-compat/apply.sh (run by
# every build and publish) sees that and does nothing; the build fails if it patched anyway.
#
# Runs as the image's non-root user `app` (uid 1654), with a read-only root filesystem in
# Kubernetes (writable: /tmp and the data volume). Health: no Docker HEALTHCHECK, because the
# image carries no gRPC health client; Kubernetes probes grpc.health.v1.Health on port 50050
# natively (deploy/k8s/base/gateway/deployment.yaml).
ARG SDK_IMAGE=mcr.microsoft.com/dotnet/sdk:10.0-noble
ARG RUNTIME_IMAGE=mcr.microsoft.com/dotnet/aspnet:10.0-noble

FROM ${SDK_IMAGE} AS build
# gcc builds libmkl-cpu-dispatch.so (build/torchsharp-compat/mkl-cpu-dispatch.c), which lets
# libtorch's oneMKL use its AVX2/AVX-512 kernels on AMD processors (docs/torchsharp-on-debian.md).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY global.json nuget.config Directory.Build.props Directory.Build.targets Directory.Packages.props ./
COPY build/ build/
COPY protos/ protos/
COPY src/Contracts/ src/Contracts/
COPY src/Client/ src/Client/
COPY src/ServiceDefaults/ src/ServiceDefaults/
COPY src/ModelService/Runtime/ src/ModelService/Runtime/
COPY src/Jobs/ src/Jobs/
COPY src/Plugins/ src/Plugins/
COPY src/Gateway/ src/Gateway/
# Plugins lay themselves out in /src/plugins/<id>/ when built (src/Plugins/Plugin.targets).
RUN dotnet publish src/Gateway/InterpMesh.Gateway.csproj -c Release -o /app \
 && for p in Probing RetrievalHeads SAE Steering; do \
      dotnet build "src/Plugins/$p/InterpMesh.Plugins.$p.csproj" -c Release || exit 1; \
    done \
 && cp -R plugins /app/plugins \
 && test ! -e /app/libglibcxx-shim.so \
 && test -e /app/libmkl-cpu-dispatch.so

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /app ./
# Kestrel's endpoints come from appsettings (Kestrel:Endpoints); the base image's default
# port 8080 would only produce an "overriding addresses" warning.
ENV ASPNETCORE_HTTP_PORTS= \
    ASPNETCORE_ENVIRONMENT=Production
EXPOSE 50050 9465
HEALTHCHECK NONE
USER 1654
ENTRYPOINT ["dotnet", "InterpMesh.Gateway.dll"]
