"""A plain Python gRPC client of InterpMesh's ModelService, built only from the protos.

Usage: client_check.py STUBS_DIR ADDRESS
Prints one JSON object: model info, and for each captured hook its shape, dtype, chunk count and
the sha256 of the reassembled bytes, plus the first logits of the final message.
"""
import hashlib
import json
import struct
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from interpmesh.v1 import model_service_pb2 as pb  # noqa: E402
from interpmesh.v1 import model_service_pb2_grpc as rpc  # noqa: E402
from interpmesh.v1 import tensor_pb2  # noqa: E402

address = sys.argv[2].replace("http://", "")
channel = grpc.insecure_channel(address)
client = rpc.ModelServiceStub(channel)

info = client.GetModelInfo(pb.GetModelInfoRequest())
request = pb.RunRequest(
    inputs=[pb.Input(tokens=pb.TokenIds(ids=[1, 403, 407, 261, 378])), pb.Input(text="Once upon")],
    captures=[pb.Capture(hooks=["blocks.*.hook_resid_post"], dtype=tensor_pb2.DTYPE_FLOAT32)],
    logits=pb.LogitsRequest(mode=pb.LogitsRequest.MODE_LAST),
)
parts, shapes, chunks, result = {}, {}, {}, None
for message in client.Run(request):
    if message.HasField("activation"):
        a = message.activation
        buffer = parts.setdefault(a.hook, bytearray())
        assert a.offset == len(buffer), "chunks arrive in order"
        buffer.extend(a.data)
        shapes[a.hook] = list(a.shape)
        chunks[a.hook] = chunks.get(a.hook, 0) + 1
    else:
        result = message.result

first_logits = struct.unpack("<4f", result.logits.data[:16])
try:
    client.Run(pb.RunRequest(inputs=[pb.Input(tokens=pb.TokenIds(ids=[1, 99999]))])).__next__()
    error = None
except grpc.RpcError as e:
    error = {"code": e.code().name, "details": e.details()}

print(json.dumps({
    "architecture": info.architecture,
    "hooks": len(info.hooks),
    "captures": {h: {"shape": shapes[h], "chunks": chunks[h], "sha256": hashlib.sha256(bytes(b)).hexdigest()} for h, b in parts.items()},
    "logits_shape": list(result.logits.shape),
    "first_logits": first_logits,
    "error": error,
}))
