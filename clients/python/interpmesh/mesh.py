"""The connection: channel, API key, and the mesh-wide calls (models, plugins, jobs, artifacts)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union
from urllib.parse import urlparse

import grpc

from ._proto.interpmesh.v1 import analysis_service_pb2 as apb
from ._proto.interpmesh.v1 import analysis_service_pb2_grpc as arpc
from ._proto.interpmesh.v1 import artifact_service_pb2_grpc as artrpc
from ._proto.interpmesh.v1 import model_service_pb2_grpc as mrpc
from .artifacts import Artifacts
from .errors import from_rpc_error
from .jobs import Job, Plugin
from .model import Model

__all__ = ["Mesh", "connect"]

_MAX_MESSAGE = 16 << 20


def _service_config(retry: bool) -> str:
    """gRPC's retry policy as the .NET client's: UNAVAILABLE and RESOURCE_EXHAUSTED, up to 5 attempts,
    following the server's grpc-retry-pushback-ms; PutArtifact (a large client stream) is sent once."""
    if not retry:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    policy = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
    return json.dumps({"methodConfig": [
        {"name": [{}], "retryPolicy": policy},
        {"name": [{"service": "interpmesh.v1.ArtifactService", "method": "PutArtifact"}]},
    ]})


class Mesh:
    """A connection to a gateway (or one model service). Make one with :func:`connect`.

    Attributes:
        url: where calls go.
        artifacts: :class:`~interpmesh.artifacts.Artifacts` (list, get, put, delete).
        timeout: deadline in seconds of unary calls (None: none).
    """

    def __init__(self, url: str, key: Optional[str] = None, *, model: Optional[str] = None, timeout: Optional[float] = None,
                 retry: bool = True, channel_options: Sequence[Tuple[str, Any]] = ()) -> None:
        parsed = urlparse(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"the server address must be an http:// or https:// URL such as http://127.0.0.1:50050, got {url[:60]!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
        target = f"{host}:{port}"
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config(retry)),
            ("grpc.http2.max_frame_size", 1 << 20),
        ]
        options += list(channel_options)
        if parsed.scheme == "https":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self.url = f"{parsed.scheme}://{target}"
        self.timeout = timeout
        metadata = []
        if key:
            metadata.append(("authorization", f"Bearer {key}"))
        self._metadata = tuple(metadata)
        self._default_model = model
        self._model_stub = mrpc.ModelServiceStub(self._channel)
        self._analysis = arpc.AnalysisServiceStub(self._channel)
        self._artifacts = artrpc.ArtifactServiceStub(self._channel)
        self.artifacts = Artifacts(self)
        self._models: Dict[Optional[str], Model] = {}

    def __repr__(self) -> str:
        return f"Mesh({self.url!r})"

    def __enter__(self) -> "Mesh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
        self._channel.close()

    # ---- models ----

    def model(self, name: Optional[str] = None) -> Model:
        """The model ``name`` as the gateway serves it (None: the gateway's default model)."""
        key = name if name is not None else self._default_model
        if key not in self._models:
            self._models[key] = Model(self, key)
        return self._models[key]

    # ---- plugins and jobs ----

    def plugins(self) -> List[Plugin]:
        """Every plugin the gateway offers (and why any failed to load)."""
        return [Plugin.from_proto(p) for p in self._unary(self._analysis.ListPlugins, apb.ListPluginsRequest()).plugins]

    def plugin(self, id: str) -> Plugin:
        """One plugin's description, with its parameters' JSON Schema (NotFound for an unknown id)."""
        return Plugin.from_proto(self._unary(self._analysis.DescribePlugin, apb.DescribePluginRequest(id=id)))

    def _analysis_request(self, plugin: str, params: Optional[Dict[str, Any]], model: Optional[str], timeout: Optional[float]) -> Any:
        return apb.AnalysisRequest(plugin=plugin, model=model or self._default_model or "",
                                   parameters_json=json.dumps(params or {}), timeout_seconds=int(timeout or 0))

    def run(self, plugin: str, params: Optional[Dict[str, Any]] = None, *, model: Optional[str] = None,
            timeout: Optional[float] = None, progress: Union[bool, TextIO] = True, raise_on_failure: bool = True) -> Job:
        """Runs an analysis and follows it to its end (RunAnalysis), showing progress on stderr.

        Returns the finished :class:`~interpmesh.jobs.Job` (``job.result.tables[...]``); a job that did not
        succeed raises the exception named after its error status (e.g. InvalidArgument naming the
        parameter) unless ``raise_on_failure`` is False. Leaving (Ctrl-C) cancels the run; use
        :meth:`submit` for work that must outlive this process.
        """
        job = Job(self, apb.Job(plugin=plugin))
        job._follow(self._stream(self._analysis.RunAnalysis, self._analysis_request(plugin, params, model, timeout)), progress)
        if raise_on_failure:
            job.raise_for_state()
        return job

    def submit(self, plugin: str, params: Optional[Dict[str, Any]] = None, *, model: Optional[str] = None,
               timeout: Optional[float] = None) -> Job:
        """Queues an analysis as a job and returns at once; follow it with ``job.watch()``."""
        return Job(self, self._unary(self._analysis.SubmitJob, self._analysis_request(plugin, params, model, timeout)))

    def job(self, id: str) -> Job:
        """A job by id, as it is now (NotFound for an unknown id)."""
        return Job(self, self._unary(self._analysis.GetJob, apb.GetJobRequest(id=id)))

    def jobs(self, plugin: Optional[str] = None, limit: int = 100) -> List[Job]:
        """Jobs this key may see, newest first, without results."""
        out: List[Job] = []
        request = apb.ListJobsRequest(plugin=plugin or "", page_size=min(max(limit, 1), 500))
        while len(out) < limit:
            page = self._unary(self._analysis.ListJobs, request)
            out.extend(Job(self, j) for j in page.jobs)
            if not page.next_page_token or not page.jobs:
                break
            request.page_token = page.next_page_token
        return out[:limit]

    # ---- plumbing ----

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _stream(self, method: Any, request: Any) -> Iterator[Any]:
        call = method(request, metadata=self._metadata)
        try:
            for m in call:
                yield m
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


def connect(url: Optional[str] = None, key: Optional[str] = None, *, model: Optional[str] = None,
            timeout: Optional[float] = None, retry: bool = True, channel_options: Sequence[Tuple[str, Any]] = ()) -> Mesh:
    """Connects to a gateway: ``mesh = interpmesh.connect("http://127.0.0.1:50050", key=...)``.

    ``url`` and ``key`` default to the environment's ``INTERPMESH_SERVER`` (or ``INTERPMESH_URL``) and
    ``INTERPMESH_API_KEY``, as the CLI's. ``model`` names the default model for :meth:`Mesh.model` and
    jobs. Calls are retried on UNAVAILABLE and RESOURCE_EXHAUSTED the way the .NET client does
    (``retry=False``: never). ``channel_options`` are added to grpc's channel arguments.
    """
    url = url or os.environ.get("INTERPMESH_SERVER") or os.environ.get("INTERPMESH_URL") or "http://127.0.0.1:50050"
    key = key if key is not None else os.environ.get("INTERPMESH_API_KEY")
    return Mesh(url, key, model=model, timeout=timeout, retry=retry, channel_options=channel_options)
