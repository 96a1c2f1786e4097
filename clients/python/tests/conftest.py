"""Fixtures: a real local mesh (`interpmesh up` from the built CLI) for the whole session, a second one
with small serving limits for the splitting and stalled-reader tests, and clients of both."""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the package from this checkout, installed or not
sys.path.insert(0, str(HERE))

import interpmesh  # noqa: E402
from meshproc import LocalMesh  # noqa: E402

#: The small mesh's limits: 3 inputs per request, 20 000 bytes of captures, 1 KiB chunks.
TIGHT = {"MaxBatch": 3, "MaxCaptureBytes": 20000, "MaxChunkBytes": 1024}
#: The impatient mesh: a Generate pauses past 1 KiB of unread output, and a call unread for 1 s is ended.
STALL = {"OutputBufferBytes": 1024, "StallTimeoutSeconds": 1, "MaxChunkBytes": 1024}


@pytest.fixture(scope="session")
def local_mesh() -> Iterator[LocalMesh]:
    with LocalMesh("concepts", key="test-key") as m:
        yield m


@pytest.fixture(scope="session")
def tight_mesh() -> Iterator[LocalMesh]:
    with LocalMesh("concepts", key="tight-key", settings=TIGHT) as m:
        yield m


@pytest.fixture(scope="session")
def stall_mesh() -> Iterator[LocalMesh]:
    with LocalMesh("concepts", key="stall-key", settings=STALL) as m:
        yield m


@pytest.fixture(scope="session")
def stall_model(stall_mesh: LocalMesh) -> Iterator[interpmesh.Model]:
    with interpmesh.connect(stall_mesh.url, key=stall_mesh.key) as m:
        yield m.model("concepts")


@pytest.fixture(scope="session")
def stall_model_direct(stall_mesh: LocalMesh) -> Iterator[interpmesh.Model]:
    """The impatient mesh's model service itself, without the gateway (whose buffers absorb a short stall)."""
    # A fixed 64 KiB stream window (no BDP growth), so what the client leaves unread backs up to the server.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    with interpmesh.connect(stall_mesh.model_url, channel_options=options) as m:
        yield m.model(None)


@pytest.fixture(scope="session")
def mesh(local_mesh: LocalMesh) -> Iterator[interpmesh.Mesh]:
    with interpmesh.connect(local_mesh.url, key=local_mesh.key) as m:
        yield m


@pytest.fixture(scope="session")
def model(mesh: interpmesh.Mesh) -> interpmesh.Model:
    return mesh.model("concepts")


@pytest.fixture(scope="session")
def tight_model(tight_mesh: LocalMesh) -> Iterator[interpmesh.Model]:
    with interpmesh.connect(tight_mesh.url, key=tight_mesh.key) as m:
        yield m.model("concepts")


NOUNS = [["dog", "cat", "bird", "horse"], ["apple", "cake", "pie", "soup"], ["ball", "game", "team", "race"]]
POSITIVE = ["happy", "good", "bright", "warm", "kind"]
NEGATIVE = ["sad", "bad", "dark", "cold", "cruel"]


def sentiment_rows(n: int, seed: int = 1) -> List[Dict[str, str]]:
    """"the dogs are very happy . what a" with its sentiment, alternating classes (the concepts toy's grammar)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive, plural = i % 2 == 0, rng.random() < 0.5
        noun = rng.choice(rng.choice(NOUNS)) + ("s" if plural else "")
        adverb = rng.choice(["", "very ", "so ", "quite "])
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append({"text": f"the {noun} {'are' if plural else 'is'} {adverb}{adjective} . what a",
                     "label": "positive" if positive else "negative"})
    return rows
