"""A finished checkpoint in the precision it was trained in.

Why after saving rather than in the trainer: bf16 training keeps fp32 master weights (the
optimizer's copy, which resume checkpoints must keep), and transformers saves those. A final
student in fp32 is twice the size on OSS and EAS, and a server reading `dtype: float32` picks a
precision of its own (vLLM's `auto` serves fp32 as fp16, which the model was never trained in).
Casting the saved files works the same after ZeRO-3 and FSDP gathers and after a LoRA merge.
"""

from __future__ import annotations

import json
from pathlib import Path

NAMES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def cast_checkpoint(directory: str | Path, dtype: str = "bfloat16") -> int:
    """Rewrite every floating tensor of the folder's `*.safetensors` in `dtype` (metadata kept) and
    declare it in config.json; the number of tensors cast."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if dtype not in NAMES:
        raise ValueError(f"dtype {dtype!r}: one of {', '.join(NAMES)}")
    target = getattr(torch, dtype)
    directory = Path(directory)
    cast, sizes = 0, {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        changed = {k: t.to(target) for k, t in tensors.items() if t.is_floating_point() and t.dtype != target}
        tensors.update(changed)
        sizes[path.name] = sum(t.numel() * t.element_size() for t in tensors.values())
        if not changed:
            continue
        tmp = path.with_name(f".tmp-{path.name}")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        cast += len(changed)
    index = directory / "model.safetensors.index.json"
    if cast and index.is_file():  # a sharded checkpoint's index states its size in bytes
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = sum(sizes[n] for n in set(data["weight_map"].values()))
        index.write_text(json.dumps(data, indent=2) + "\n")
    config = directory / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        data["dtype"] = dtype
        data.pop("torch_dtype", None)
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return cast

