#!/usr/bin/env python3
"""Peer for `fisherkit bench merge`: a plain streaming weighted average in numpy.

usage: numpy_weighted_average.py OUT_DIR MODEL.safetensors [MODEL.safetensors ...]

Equal weights. Inputs are memory-mapped (np.memmap), merged one tensor at a time in
f32 and written as bf16 (round to nearest even) into OUT_DIR/model.safetensors.
numpy has no bfloat16, so bf16 is handled as uint16 bit patterns, as a careful
hand-written script would.
"""
import json
import os
import struct
import sys

import numpy as np


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    bits = x.view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def main():
    out_dir, paths = sys.argv[1], sys.argv[2:]
    headers = [read_header(p) for p in paths]
    maps = [np.memmap(p, dtype=np.uint8, mode="r") for p in paths]
    names = sorted(headers[0][0], key=lambda k: headers[0][0][k]["data_offsets"][0])
    weight = np.float32(1.0 / len(paths))
    out_header, offset = {}, 0
    for name in names:
        info = headers[0][0][name]
        size = int(np.prod(info["shape"])) * 2
        out_header[name] = {"dtype": "BF16", "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(out_header).encode()
    blob += b" " * (-len(blob) % 8)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for name in names:
            acc = None
            for (header, start), m in zip(headers, maps):
                a, b = header[name]["data_offsets"]
                x = bf16_to_f32(m[start + a : start + b].view(np.uint16))
                acc = x * weight if acc is None else acc + x * weight
            out.write(f32_to_bf16(acc).tobytes())


if __name__ == "__main__":
    main()
