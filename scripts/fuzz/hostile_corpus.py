#!/usr/bin/env python3
"""Writes the small hostile inputs of issue 17 into tests/data/fuzz/<target>/ (the committed
fuzz corpus that `cargo test -p mobilenetv2 --test hostile_input` replays). Standard library
only; deterministic."""
import os, struct, zlib, json

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "fuzz")

def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def zip_bytes(entries, aliases=()):
    out, central, offsets, count = bytearray(), bytearray(), [], 0
    def cent(name, data, off):
        nonlocal count
        central.extend(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, 0, 0, 0,
                                   zlib.crc32(data), len(data), len(data), len(name), 0, 0, 0, 0, 0, off))
        central.extend(name.encode())
        count += 1
    for name, data in entries:
        offsets.append(len(out))
        out.extend(struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 0, 0, 0,
                               zlib.crc32(data), len(data), len(data), len(name), 0))
        out.extend(name.encode()); out.extend(data)
    for i, (name, data) in enumerate(entries):
        cent(name, data, offsets[i])
    for name, i in aliases:
        cent(name, entries[i][1], offsets[i])
    cd = len(out)
    out.extend(central)
    out.extend(struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, count, count, len(central), cd, 0))
    return bytes(out)

def s(x):
    return b"X" + struct.pack("<I", len(x)) + x.encode()

def tensor(key, numel, offset, size, stride):
    ints = lambda v: b"(" + b"".join(b"J" + struct.pack("<i", d) for d in v) + b"t"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n((" + s("storage") + b"ctorch\nFloatStorage\n" + s(key)
            + s("cpu") + b"J" + struct.pack("<i", numel) + b"NtQ" + b"J" + struct.pack("<i", offset)
            + ints(size) + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR")

legacy_head = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + b"."

# pth
put("pth", "nested_tuple1.zip.pth", zip_bytes([("m/data.pkl", b"\x80\x02N" + b"\x85" * 5000 + b".")]))
put("pth", "nested_version.legacy.pth", legacy_head + b"\x80\x02N" + b"\x85" * 5000 + b".")
pkl = b"\x80\x02}(" + b"".join(s(f"w{k}") + tensor(str(k), 1, 0, [1], [1]) for k in range(8)) + b"u."
put("pth", "overlap.zip.pth", zip_bytes([("m/data.pkl", pkl), ("m/data/0", bytes(4096))],
                                        [(f"m/data/{k}", 1) for k in range(1, 8)]))
pkl1 = b"\x80\x02}" + s("w") + tensor("0", 1, 0, [1], [1]) + b"s."
put("pth", "duplicate.zip.pth", zip_bytes([("m/data.pkl", pkl1), ("m/data/0", bytes(4)), ("m/data/0", bytes(4))]))
put("pth", "big_entry_small_storage.zip.pth", zip_bytes([("m/data.pkl", pkl1), ("m/data/0", bytes(8192))]))
bc = b"\x80\x02}" + s("w") + tensor("k", 6, 0, [1 << 30, 1 << 30], [0, 0]) + b"s."
keys = b"\x80\x02](" + s("k") + b"e."
put("pth", "broadcast.legacy.pth", legacy_head + b"\x80\x02M\xe9\x03." + b"\x80\x02}." + bc + keys
    + struct.pack("<Q", 6) + bytes(24))

# image
def png(w, h, rows):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
put("image", "tall_1x100000.png", png(1, 100000, [b"\x80"] * 100000))
put("image", "wide_100000x1.png", png(100000, 1, [bytes(100000)]))
hdr = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
put("image", "huge_header.png", hdr + struct.pack(">I", zlib.crc32(hdr[12:])) + b"\x00\x00\x00\x00IDAT\x35\xaf\x06\x1e")

# npy
h = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % (2**63 - 1)
put("npy", "overflow.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode())
h = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"
put("npy", "product_overflow.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode())

# idx
put("idx", "zero_size.idx", bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]))
put("idx", "overflow.idx", bytes([0, 0, 8, 3]) + b"\xff" * 12)
put("idx", "tall_h1.idx", bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x10, 0]) + bytes(4096))
put("idx", "tall_h1.idx.gz", __import__("gzip").compress(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x10, 0]) + bytes(4096), mtime=0))

# safetensors
def st(header, data):
    h = json.dumps(header, separators=(",", ":")) if not isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h.encode() + data
put("safetensors", "duplicate_keys.safetensors",
    st('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)))
put("safetensors", "huge_shape.safetensors",
    st({"w": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}, b""))
put("safetensors", "bad_preprocess.safetensors",
    st({"__metadata__": {"preprocess": '{"resize":4611686018427387904,"mean":[0,0,0],"std":[0,0,0]}'},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
put("safetensors", "deep_json.safetensors", st("[" * 5000 + "]" * 5000, b""))

# weights_load: the same bytes through the sniffing path
for t, n in [("pth", "nested_tuple1.zip.pth"), ("pth", "overlap.zip.pth"), ("safetensors", "duplicate_keys.safetensors")]:
    put("weights_load", n, open(os.path.join(ROOT, t, n), "rb").read())

# metadata: key byte (0 spec, 1 preprocess, 2 labels, 3 quantization) + JSON, 0xff-separated
put("metadata", "resize_2p62", b"\x01" + b'{"resize":4611686018427387904,"mean":[0,0,0],"std":[1,1,1]}')
put("metadata", "std_zero", b"\x01" + b'{"resize":256,"mean":[0,0,0],"std":[0,0,0]}')
put("metadata", "nan_mean", b"\x01" + b'{"resize":null,"mean":[1e999,0,0],"std":[1,1,1]}')
put("metadata", "labels_long", b"\x02" + json.dumps(["x" * 5000]).encode())
put("metadata", "spec_garbage", b"\x00" + b'{"width":1e308}' + b"\xff\x03{}")
