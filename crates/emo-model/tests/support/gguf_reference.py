#!/usr/bin/env python3
"""Reference values from gguf-py for crates/emo-model/tests/gguf_dequant.rs.

Sub-commands (all outputs are raw little-endian f32 or JSON, written where the Rust test says):

  meta FILE OUT.json
      version, alignment, data offset, every metadata key (type; value for scalars; length,
      element type, first and last element for arrays) and every tensor (name, ggml type id, ggml
      dims, absolute data offset, byte size), as GGUFReader reports them.
  tensors FILE OUTDIR NAME...
      dequantizes each named tensor with gguf.quants.dequantize and writes OUTDIR/NAME.f32.
  blocks TYPE IN.bin OUT.f32
      dequantizes raw blocks of ggml type TYPE (a name such as Q4_0) read from IN.bin.
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType


def scalar(v):
    # Floats go as their exact bit pattern too, so the comparison cannot suffer from JSON rounding.
    if isinstance(v, float):
        return {"float": v, "f64_bits": int(np.float64(v).view(np.uint64))}
    return v


def meta(path, out):
    r = GGUFReader(path)
    fields = []
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue  # header pseudo-fields
        main = f.types[0]
        entry = {"key": name, "type": main.name}
        if main == GGUFValueType.ARRAY:
            # GGUFReader flattens arrays of arrays: `data` indexes the leaves, and the outer count
            # is only in the raw parts (key length, key, value type, element type, count, ...).
            entry["elem_type"] = f.types[1].name if len(f.types) > 1 else None
            entry["leaves"] = len(f.data)
            entry["len"] = int(f.parts[4][0])
            if len(f.types) == 2 and f.data:
                items = f.contents()
                entry["first"] = scalar(items[0])
                entry["last"] = scalar(items[-1])
        else:
            entry["value"] = scalar(f.contents())
        fields.append(entry)
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in r.tensors
    ]
    doc = {
        "version": int(r.fields["GGUF.version"].contents()),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "fields": fields,
        "tensors": tensors,
    }
    with open(out, "w") as fh:
        json.dump(doc, fh)


def tensors(path, outdir, names):
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    for name in names:
        t = by_name[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        np.ascontiguousarray(values, dtype="<f4").ravel().tofile(f"{outdir}/{name}.f32")


def blocks(type_name, inp, out):
    qtype = GGMLQuantizationType[type_name]
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.fromfile(inp, dtype=np.uint8).reshape(-1, type_size)
    values = gguf.quants.dequantize(raw, qtype)
    np.ascontiguousarray(values, dtype="<f4").ravel().tofile(out)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "meta" and len(args) == 2:
        meta(*args)
    elif cmd == "tensors" and len(args) >= 2:
        tensors(args[0], args[1], args[2:])
    elif cmd == "blocks" and len(args) == 3:
        blocks(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
