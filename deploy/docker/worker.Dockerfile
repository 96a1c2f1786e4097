# syntax=docker/dockerfile:1
# The analysis worker image: the worker plus the built-in plugins (circuits, probing, retrieval-heads, sae,
# steering) in /app/plugins, with TorchSharp and libtorch. It takes jobs from the job store the
# gateways queue them in (Worker__Jobs__ConnectionString), calls the model services of
# Worker:Models and writes artifacts to the volume the gateways serve. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t interpmesh/worker:0.1.0 .
#
# Both stages are Ubuntu 24.04 "noble": its libstdc++ (GCC 14) exports GLIBCXX_3.4.32, so
# TorchSharp's libLibTorchSharp.so loads as shipped. build/torchsharp-compat/apply.sh (run by
# every build and publish) sees that and does nothing; the build fails if it patched anyway.
#
# Runs as the image's non-root user `app` (uid 1654). Serves grpc.health.v1 on port 50052 and
# Prometheus /metrics on 9465 (appsettings.json, Kestrel:Endpoints). A plugin that ignores
# cancellation makes the worker exit with code 3 (Worker:RecycleStuckPlugins) after putting its
# other jobs back in the queue: run it where it is restarted (Kubernetes restartPolicy Always).
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
COPY src/Routing/ src/Routing/
COPY src/Artifacts/ src/Artifacts/
COPY src/Plugins/ src/Plugins/
COPY src/AnalysisWorker/ src/AnalysisWorker/
# Plugins lay themselves out in /src/plugins/<id>/ when built (src/Plugins/Plugin.targets).
RUN dotnet publish src/AnalysisWorker/InterpMesh.AnalysisWorker.csproj -c Release -o /app \
 && for p in Circuits Probing RetrievalHeads SAE Steering; do \
      dotnet build "src/Plugins/$p/InterpMesh.Plugins.$p.csproj" -c Release || exit 1; \
    done \
 && cp -R plugins /app/plugins \
 && test ! -e /app/libglibcxx-shim.so \
 && test -e /app/libmkl-cpu-dispatch.so

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /app ./
# Kestrel's endpoints come from appsettings (Kestrel:Endpoints); the base image's default
# port 8080 would only produce an "overriding addresses" warning. The plugins are in the image, in
# /app/plugins: Worker:PluginsPath "plugins" of the image's appsettings.json (no environment variable,
# which would override a mounted appsettings.json that names another folder).
ENV ASPNETCORE_HTTP_PORTS= \
    ASPNETCORE_ENVIRONMENT=Production
EXPOSE 50052 9465
HEALTHCHECK NONE
USER 1654
ENTRYPOINT ["dotnet", "InterpMesh.AnalysisWorker.dll"]
