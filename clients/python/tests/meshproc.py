"""Starts a real local mesh (`interpmesh up`: model service, gateway, analysis worker on loopback) as a
subprocess of the built CLI, for the tests, the walkthrough and the benchmark."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]


def cli() -> List[str]:
    """The built `interpmesh` command: $INTERPMESH_CLI, else the Debug (then Release) build of src/Cli."""
    override = os.environ.get("INTERPMESH_CLI")
    if override:
        return override.split()
    for config in ("Debug", "Release"):
        dll = REPO / "src" / "Cli" / "bin" / config / "net10.0" / "linux-x64" / "interpmesh.dll"
        if dll.exists():
            return ["dotnet", str(dll)]
    raise RuntimeError("the interpmesh CLI is not built: run `dotnet build src/Cli` (or set INTERPMESH_CLI)")


class LocalMesh:
    """`interpmesh up --grpc-port 0 --model-port 0` with a temporary data folder; `url` once started."""

    def __init__(self, model: str = "concepts", key: Optional[str] = "test-key", settings: Optional[Dict[str, object]] = None,
                 threads: Optional[int] = None, startup_timeout: float = 180.0) -> None:
        self.model_path = str(REPO / "models" / model) if "/" not in model else model
        self.name = Path(self.model_path).name
        self.key = key
        self.settings = settings or {}
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.url = ""
        self.model_url = ""
        self.data = ""
        self.process: Optional[subprocess.Popen] = None
        self.output: List[str] = []

    def start(self) -> "LocalMesh":
        self.data = tempfile.mkdtemp(prefix="interpmesh-pytest-")
        args = cli() + ["up", "--grpc-port", "0", "--web-port", "0", "--model-port", "0", "--data", self.data, "--model", self.model_path]
        if self.key:
            args += ["--key", self.key]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.settings:
            args += ["--model-settings", ",".join(f"{k}={v}" for k, v in self.settings.items())]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
        found = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                m = re.match(r"up: gateway (http://\S+) .* served at (http://[0-9.:]+)", line)
                if m and not self.url:
                    self.url, self.model_url = m.group(1), m.group(2)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + self.startup_timeout
        while not found.wait(0.2):
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("the mesh did not start in time:\n" + "\n".join(self.output[-30:]))
        if not self.url:
            self.stop()
            raise RuntimeError("the mesh failed to start:\n" + "\n".join(self.output[-30:]))
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = ""

    def __enter__(self) -> "LocalMesh":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
