# syntax=docker/dockerfile:1
# The gateway image: the stateless front door only. No plugins and no libtorch: analysis
# workers run the plugins (deploy/docker/worker.Dockerfile, image interpmesh/worker) and publish
# them in the job store, where the gateway lists and validates them. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t interpmesh/gateway:0.1.0 .
#
# Both stages are Ubuntu 24.04 "noble", like the other images; the build checks that no
# TorchSharp compatibility shim or libtorch found its way into /app.
#
# Runs as the image's non-root user `app` (uid 1654), with a read-only root filesystem in
# Kubernetes (writable: /tmp and the data volume). Health: no Docker HEALTHCHECK, because the
# image carries no gRPC health client; Kubernetes probes grpc.health.v1.Health on port 50050
# natively (deploy/k8s/base/gateway/deployment.yaml).
ARG SDK_IMAGE=mcr.microsoft.com/dotnet/sdk:10.0-noble
ARG RUNTIME_IMAGE=mcr.microsoft.com/dotnet/aspnet:10.0-noble

FROM ${SDK_IMAGE} AS build
WORKDIR /src
COPY global.json nuget.config Directory.Build.props Directory.Build.targets Directory.Packages.props ./
COPY build/ build/
COPY protos/ protos/
COPY src/Contracts/ src/Contracts/
COPY src/Client/ src/Client/
COPY src/ServiceDefaults/ src/ServiceDefaults/
COPY src/Jobs/ src/Jobs/
COPY src/Routing/ src/Routing/
COPY src/Artifacts/ src/Artifacts/
COPY src/Gateway/ src/Gateway/
RUN dotnet publish src/Gateway/InterpMesh.Gateway.csproj -c Release -o /app \
 && test ! -e /app/libglibcxx-shim.so \
 && test ! -e /app/libtorch.so \
 && test ! -e /app/TorchSharp.dll \
 && test ! -e /app/plugins

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /app ./
# Kestrel's endpoints come from appsettings (Kestrel:Endpoints); the base image's default
# port 8080 would only produce an "overriding addresses" warning.
ENV ASPNETCORE_HTTP_PORTS= \
    ASPNETCORE_ENVIRONMENT=Production
EXPOSE 50050 50080 9465
HEALTHCHECK NONE
USER 1654
ENTRYPOINT ["dotnet", "InterpMesh.Gateway.dll"]
