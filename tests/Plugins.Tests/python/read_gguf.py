"""An independent GGUF reader (from the specification, stdlib only) for the control-vector test.

Prints JSON: version, metadata (strings and integers), and for each tensor its dims, type and
float values.
"""
import json
import struct
import sys

data = open(sys.argv[1], "rb").read()
pos = 0


def take(fmt):
    global pos
    values = struct.unpack_from("<" + fmt, data, pos)
    pos += struct.calcsize("<" + fmt)
    return values if len(values) > 1 else values[0]


def string():
    global pos
    n = take("Q")
    s = data[pos:pos + n].decode("utf-8")
    pos += n
    return s


assert data[:4] == b"GGUF", "bad magic"
pos = 4
version = take("I")
n_tensors = take("Q")
n_kv = take("Q")
meta = {}
for _ in range(n_kv):
    key = string()
    kind = take("I")
    if kind == 8:
        meta[key] = string()
    elif kind == 5:
        meta[key] = take("i")
    elif kind == 4:
        meta[key] = take("I")
    else:
        raise SystemExit("unexpected metadata type %d for %s" % (kind, key))
infos = []
for _ in range(n_tensors):
    name = string()
    n_dims = take("I")
    dims = [take("Q") for _ in range(n_dims)]
    kind = take("I")
    offset = take("Q")
    infos.append((name, dims, kind, offset))
alignment = meta.get("general.alignment", 32)
start = (pos + alignment - 1) // alignment * alignment
tensors = {}
for name, dims, kind, offset in infos:
    assert kind == 0, "expected F32"
    count = 1
    for dim in dims:
        count *= dim
    tensors[name] = {"dims": dims, "values": list(struct.unpack_from("<%df" % count, data, start + offset))}
print(json.dumps({"version": version, "metadata": meta, "tensors": tensors}))
