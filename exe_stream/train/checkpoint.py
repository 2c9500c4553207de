"""Checkpoint files of training runs: tensors in safetensors, everything else in JSON.

Nothing here unpickles: an optimiser's state dict is split into its tensors (safetensors) and
its plain values (JSON), and put back together on resume. Files are written under a temporary
name and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, atomic_write_text
from .config import TrainError


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors (any device) as safetensors on the CPU, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors checkpoint onto the CPU."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise TrainError(f"checkpoint {path} cannot be read ({e}); delete {path.parent} to start over") from e


def optimizer_to_safetensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (keys ``"<param id>/<name>"``) and the JSON
    rest (param_groups and non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``optimizer_to_safetensors``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A 56-bit seed derived from (seed, epoch, salt): every epoch's random draws are fixed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{salt}".encode()).digest()[:7], "little")
