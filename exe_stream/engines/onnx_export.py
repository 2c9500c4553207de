"""ONNX export of a model card's network, with a dynamic batch axis, cached on disk.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export-based; the TorchScript exporter
is deprecated since torch 2.9), which needs the ``onnx`` and ``onnxscript`` packages
(``pip install 'exe-stream[onnx]'``). The graph has one input ``input`` float32 (or float16)
[batch, C, H, W] and one output ``logits`` [batch, n_classes]; only the batch axis is dynamic
(``torch.export.Dim``, as in the dynamic_shapes section of the torch.onnx docs), and the weights
are stored inside the file (``external_data=False``; every card's network is far below 2 GB).

Cache: ``<cache>/<card name>-<key>.onnx`` where ``key`` (16 hex digits) is the sha256 of the
network's content hash (``network_hash``: the card's canonical JSON plus every state-dict
tensor's name, dtype, shape and bytes), the opset, the precision, the input shape, and the
exporter with the torch and onnxscript versions. A file that exists is complete (written
under a temporary name, then renamed), so it is reused without re-exporting; a changed
weight, card field, opset or exporter version gives a new key and a new export. The key's
contents are also stored in the file's ``metadata_props`` (``exe_stream.*``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from torch import nn

from ..atomic import atomic_write
from .profile import MIN_OPSET, EngineError

if TYPE_CHECKING:
    from ..models import ModelCard

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER = "torch.onnx.export(dynamo=True)"
# Example batch size traced by the exporter (not 0 or 1, which torch.export specialises on).
EXAMPLE_BATCH = 2
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class OnnxExport:
    """An exported (or cached) ONNX file."""

    # The .onnx file.
    path: Path
    # 16 hex digits naming the export (see the module docstring).
    key: str
    # True when this call exported it, False when it was found in the cache.
    exported: bool


def require_exporter() -> None:
    """Raise EngineError unless the ONNX exporter's packages (onnx, onnxscript) import."""
    missing = []
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise EngineError(
            f"ONNX export needs the packages {missing}, which are not installed; "
            "install them with: pip install 'exe-stream[onnx]'"
        )


def network_hash(network: nn.Module, card: ModelCard) -> str:
    """sha256 (hex) over the card's canonical JSON and every state-dict entry (name, dtype,
    shape, raw bytes) in name order: changes with any weight or card field."""
    h = hashlib.sha256(card.canonical_json())
    for name, t in sorted(network.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _exporter_versions() -> dict[str, str]:
    import onnxscript

    return {"torch": torch.__version__, "onnxscript": onnxscript.__version__}


def export_key(net_hash: str, card: ModelCard, opset: int, precision: str) -> dict[str, object]:
    """Everything an exported file depends on (hashed into its name)."""
    return {
        "network_hash": net_hash,
        "input": [card.channels, *card.input_size],
        "opset": opset,
        "precision": precision,
        "exporter": EXPORTER,
        **_exporter_versions(),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def export_onnx(
    network: nn.Module,
    card: ModelCard,
    *,
    opset: int = 18,
    precision: Literal["fp32", "fp16"] = "fp32",
    cache: str | os.PathLike | None = None,
) -> OnnxExport:
    """Export ``network`` (the network of ``card``, any device; not modified) to ONNX, or find
    it in the cache (default ``exe_stream.engines.cache_dir()``).

    precision "fp32": float32 weights, input and logits; "fp16": float16 throughout (the input
    of strongly typed fp16 TensorRT plans). The export runs on the CPU.
    """
    if precision not in _DTYPES:
        raise EngineError(f"ONNX export precision must be one of {list(_DTYPES)}, got {precision!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise EngineError(f"ONNX opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    require_exporter()
    if cache is None:
        from . import cache_dir

        cache = cache_dir()
    directory = Path(cache)
    key_data = export_key(network_hash(network, card), card, opset, precision)
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = directory / f"{_slug(card.name)}-{key}.onnx"
    if path.is_file():
        return OnnxExport(path, key, exported=False)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create the engine cache directory {str(directory)!r}: {e}") from e

    dtype = _DTYPES[precision]
    params = list(network.parameters())
    as_is = not network.training and all(p.device.type == "cpu" and p.dtype == dtype for p in params)
    # A copy when the network must move, change dtype or leave training mode: the caller's
    # module is left as it was.
    net = network if as_is else copy.deepcopy(network).to("cpu", dtype).eval()
    example = torch.zeros((EXAMPLE_BATCH, card.channels, *card.input_size), dtype=dtype)
    batch = torch.export.Dim("batch", min=1)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation/tracing chatter
            program = torch.onnx.export(
                net, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
            )
        props = program.model.metadata_props
        props["exe_stream.model"] = card.name
        props["exe_stream.labels"] = json.dumps(list(card.labels))
        props.update({f"exe_stream.{k}": json.dumps(v) for k, v in key_data.items()})
        atomic_write(path, lambda tmp: program.save(str(tmp), external_data=False))
    except EngineError:
        raise
    except Exception as e:  # the exporter raises many types
        detail = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the exporter colours its messages
        raise EngineError(f"ONNX export of model {card.name!r} ({card.architecture}) failed: {detail}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return OnnxExport(path, key, exported=True)


def export_models(
    specs: Sequence[str],
    *,
    precision: Literal["fp32", "fp16"] = "fp32",
    opset: int = 18,
    cache: str | os.PathLike | None = None,
) -> list[tuple[str, OnnxExport]]:
    """Export every model of ``specs`` (built-in names, directories, ``ens:a+b``: each member) to
    ONNX in ``cache`` (default ``cache_dir()``). Returns (member name, export) pairs in order."""
    from ..models import load_model

    results = []
    for spec in specs:
        model = load_model(spec, "cpu")
        for card, net in zip(model.cards, model.networks):
            results.append((card.name, export_onnx(net, card, opset=opset, precision=precision, cache=cache)))
    return results
