"""Run inside the converter environment (tensorflow-cpu 2.15, tf2onnx 1.17): make an old TFJS graph
model loadable by TF 2.15 and convert it to ONNX.

    python tfjs_convert.py MODEL.json OUT.onnx [--opset 17]

Old TFJS graph JSONs omit node attributes that TF 2.15's op definitions now require: ``_FusedConv2D``
has no default for ``TArgs`` (the dtypes of its extra inputs), and ops such as TopKV2/Fill lack
attributes that do have defaults (``index_type``). We add them, write the patched JSON next to links to
the original weight shards, and hand it to tf2onnx. Only this file imports TensorFlow."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def complete_attributes(nodes: list[dict]) -> int:
    from google.protobuf.json_format import MessageToDict
    from tensorflow.python.framework import op_def_registry

    added = 0
    for node in nodes:
        attrs = node.setdefault("attr", {})
        if node["op"] == "_FusedConv2D" and "TArgs" not in attrs:
            extra = int(attrs.get("num_args", {}).get("i", "0"))
            dtype = attrs.get("T", {}).get("type", "DT_FLOAT")
            attrs["TArgs"] = {"list": {"type": [dtype] * extra}}
            added += 1
        op_def = op_def_registry.get(node["op"])
        if op_def is None:
            continue
        for attr in op_def.attr:
            if attr.name not in attrs and attr.HasField("default_value"):
                attrs[attr.name] = MessageToDict(attr.default_value)
                added += 1
    return added


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_json")
    ap.add_argument("output")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    with open(args.model_json) as f:
        model = json.load(f)
    added = complete_attributes(model["modelTopology"]["node"])
    for fn in model["modelTopology"].get("library", {}).get("function", []):
        added += complete_attributes(fn.get("nodeDef", []))
    src_dir = os.path.dirname(os.path.abspath(args.model_json))
    with tempfile.TemporaryDirectory() as tmp:
        patched = os.path.join(tmp, os.path.basename(args.model_json))
        with open(patched, "w") as f:
            json.dump(model, f)
        for group in model["weightsManifest"]:
            for shard in group["paths"]:
                os.symlink(os.path.join(src_dir, shard), os.path.join(tmp, shard))
        print(f"{os.path.basename(args.model_json)}: added {added} attributes", flush=True)
        return subprocess.call([sys.executable, "-m", "tf2onnx.convert", "--tfjs", patched, "--output", args.output,
                                "--opset", str(args.opset)])


if __name__ == "__main__":
    sys.exit(main())
