# syntax=docker/dockerfile:1
# The model-service image, in two variants chosen by the INTERPMESH_DEVICE build argument, which
# is passed on as the MSBuild property InterpMeshDevice (src/ModelService/Runtime/InterpMesh.Runtime.csproj):
#   cpu  (default) TorchSharp-cpu         docker build -f deploy/docker/model-service.Dockerfile -t interpmesh/model-service:0.1.0-cpu .
#   cuda           TorchSharp-cuda-linux  docker build -f deploy/docker/model-service.Dockerfile --build-arg INTERPMESH_DEVICE=cuda -t interpmesh/model-service:0.1.0-cuda .
# The CUDA variant carries libtorch's own CUDA libraries; the node needs the NVIDIA driver and
# container toolkit (or the GPU operator), which mount the driver into the container.
#
# Both stages are Ubuntu 24.04 "noble": its libstdc++ (GCC 14) exports GLIBCXX_3.4.32, so
# TorchSharp's libLibTorchSharp.so loads as shipped. build/torchsharp-compat/apply.sh (run by
# every build and publish) sees that and does not patch it; the build fails if it patched anyway,
# or if it could not build the MKL CPU-dispatch library.
#
# Runs as the image's non-root user `app` (uid 1654), with a read-only root filesystem in
# Kubernetes (writable: /tmp). Models come from a volume (/models). Health: no Docker
# HEALTHCHECK, because the image carries no gRPC health client; Kubernetes probes
# grpc.health.v1.Health on port 50051 natively (NOT_SERVING until the model has loaded).
ARG SDK_IMAGE=mcr.microsoft.com/dotnet/sdk:10.0-noble
ARG RUNTIME_IMAGE=mcr.microsoft.com/dotnet/aspnet:10.0-noble

FROM ${SDK_IMAGE} AS build
ARG INTERPMESH_DEVICE=cpu
# gcc builds libmkl-cpu-dispatch.so (build/torchsharp-compat/mkl-cpu-dispatch.c), which lets
# libtorch's oneMKL use its AVX2/AVX-512 kernels on AMD processors (docs/torchsharp-on-debian.md).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY global.json nuget.config Directory.Build.props Directory.Build.targets Directory.Packages.props ./
COPY build/ build/
COPY protos/ protos/
COPY src/Contracts/ src/Contracts/
COPY src/ServiceDefaults/ src/ServiceDefaults/
COPY src/ModelService/Runtime/ src/ModelService/Runtime/
COPY src/ModelService/Engine/ src/ModelService/Engine/
COPY src/ModelService/Wire/ src/ModelService/Wire/
COPY src/ModelService/Host/ src/ModelService/Host/
COPY src/Plugins/Abstractions/ src/Plugins/Abstractions/
RUN dotnet publish src/ModelService/Host/InterpMesh.ModelService.csproj -c Release -o /app \
      -p:InterpMeshDevice=${INTERPMESH_DEVICE} \
 && test ! -e /app/libglibcxx-shim.so \
 && test -e /app/libmkl-cpu-dispatch.so

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /app ./
# Kestrel's endpoints come from appsettings (Kestrel:Endpoints); the base image's default
# port 8080 would only produce an "overriding addresses" warning. NVIDIA_DRIVER_CAPABILITIES
# asks the NVIDIA container runtime for the compute libraries (ignored on CPU nodes).
ENV ASPNETCORE_HTTP_PORTS= \
    ASPNETCORE_ENVIRONMENT=Production \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 50051 9464
HEALTHCHECK NONE
USER 1654
ENTRYPOINT ["dotnet", "InterpMesh.ModelService.dll"]
