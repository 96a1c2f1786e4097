"""An independent GGUF control-vector writer (from the GGUF specification, stdlib only), as repeng
and llama.cpp's cvector-generator lay their files out, for the control-vector reading test.

usage: write_gguf.py OUT N_EMBD SEED BLOCK[,BLOCK...] [--f16] [--alignment A] [--arch NAME]
Writes direction.B for each block B with reproducible values (printed as JSON: {B: [values]}),
extra metadata of several types (as real files carry) and, with --alignment, general.alignment.
"""
import json
import random
import struct
import sys

out, n_embd, seed, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(b) for b in sys.argv[4].split(",")]
f16 = "--f16" in sys.argv
alignment = int(sys.argv[sys.argv.index("--alignment") + 1]) if "--alignment" in sys.argv else 32
arch = sys.argv[sys.argv.index("--arch") + 1] if "--arch" in sys.argv else "controlvector"
rng = random.Random(seed)
values = {b: [round(rng.uniform(-1, 1), 3) for _ in range(n_embd)] for b in blocks}


def gstr(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


kv = []
kv.append(gstr("general.architecture") + struct.pack("<I", 8) + gstr(arch))
kv.append(gstr("controlvector.model_hint") + struct.pack("<I", 8) + gstr("gpt2"))
kv.append(gstr("controlvector.layer_count") + struct.pack("<I", 5) + struct.pack("<i", len(blocks)))
kv.append(gstr("general.name") + struct.pack("<I", 8) + gstr("a repeng-style vector"))
kv.append(gstr("example.float") + struct.pack("<I", 6) + struct.pack("<f", 0.5))
kv.append(gstr("example.flag") + struct.pack("<I", 7) + struct.pack("<B", 1))
kv.append(gstr("example.array") + struct.pack("<I", 9) + struct.pack("<I", 8) + struct.pack("<Q", 2) + gstr("a") + gstr("bc"))
kv.append(gstr("example.u64") + struct.pack("<I", 10) + struct.pack("<Q", 7))
if "--alignment" in sys.argv:
    kv.append(gstr("general.alignment") + struct.pack("<I", 4) + struct.pack("<I", alignment))

elem = 2 if f16 else 4
infos = b""
offset = 0
datas = []
for b in blocks:
    infos += gstr("direction.%d" % b) + struct.pack("<I", 1) + struct.pack("<Q", n_embd) + struct.pack("<I", 1 if f16 else 0) + struct.pack("<Q", offset)
    data = b"".join(struct.pack("<e" if f16 else "<f", v) for v in values[b])
    pad = (-len(data)) % alignment
    datas.append(data + b"\0" * pad)
    offset += len(data) + pad

header = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", len(blocks)) + struct.pack("<Q", len(kv)) + b"".join(kv) + infos
header += b"\0" * ((-len(header)) % alignment)
with open(out, "wb") as f:
    f.write(header + b"".join(datas))
print(json.dumps({str(b): [struct.unpack("<e", struct.pack("<e", v))[0] if f16 else struct.unpack("<f", struct.pack("<f", v))[0] for v in values[b]] for b in blocks}))
