"""Identity embeddings: dlib's ResNet face encoder (``dlib_face_recognition_resnet_model_v1``,
128-d, public domain, shipped by the package ``face-recognition-models``) in torch, batched.

The network is read straight from dlib's serialized file (no dlib needed): layers are stored
innermost first, each as its version string, then its parameters as one tensor (version, four
dimensions, raw little-endian float32) and its geometry as dlib's packed integers (a byte with
the length and sign, then the magnitude's bytes); floats outside tensors are a packed int64
mantissa and int16 exponent. ``read_dlib_net`` walks the file from one layer name to the next,
reading only what it needs, and checks the layer sequence against the architecture:

    input 150x150 RGB, (pixel - mean) / 256
    con 32 7x7 /2 -> affine -> relu -> max_pool 3x3 /2
    residual blocks (con 3x3 -> affine -> relu -> con 3x3 -> affine, + shortcut, relu):
      3 x 32; 64 /2, 3 x 64; 128 /2, 2 x 128; 256 /2, 2 x 256; 256 /2
    a downsampling block's shortcut is a 2x2 /2 average pool of its input, summed the way
    dlib's add_prev sums tensors of different shapes (zero where one of them has no value)
    global average pool -> fc 128 (no bias)

``affine`` is a frozen batch norm (gamma * x + beta per channel). ``embed_chips`` takes face
chips aligned as dlib's ``get_face_chip(img, shape_5_points, size=150, padding=0.25)`` makes
them; dlib compares embeddings by Euclidean distance, same person below 0.6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from . import failsafe
from .models._convert import package_weights

CHIP_SIZE = 150
# The column characters add to the faces dataset (scan --characters).
CHARACTER_FIELDS = pa.schema([("character_id", pa.int32())])
# dlib's face_recognition threshold: two embeddings closer than this are the same person.
SAME_PERSON_DISTANCE = 0.6

_NAME = re.compile(rb"\x01([\x03-\x20])(con_\d|affine_\d?|relu_\d?|max_pool_\d|avg_pool_\d|add_prev_\d?"
                   rb"|fc_\d|input_rgb_image_sized|loss_metric_\d)")


class _Bytes:
    """dlib's serialization primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size, negative = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if negative else value

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos:self.pos + n].decode("ascii")
        self.pos += n
        return s

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"dlib tensor version {version}, expected 2")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        a = np.frombuffer(self.data, "<f4", count, self.pos).reshape(dims).copy()
        self.pos += 4 * count
        return a


@dataclass
class _Layer:
    kind: str  # input, con, affine, relu, max_pool, avg_pool, add_prev, fc, loss
    params: np.ndarray | None = None
    ints: tuple[int, ...] = ()  # con: filters, nr, nc, stride_y, stride_x, pad_y, pad_x; pools: nr..pad_x
    floats: tuple[float, ...] = ()  # input: the channel means


def read_dlib_net(path: str | Path) -> list[_Layer]:
    """The layers of a serialized dlib ResNet, input first. Raises ValueError naming the file
    when it is not the expected network."""
    path = Path(path)
    data = path.read_bytes()
    layers: list[_Layer] = []
    pos = 0
    try:
        while (m := _NAME.search(data, pos)) is not None:
            r = _Bytes(data, m.start())
            name = r.string()
            kind = re.sub(r"_\d*$", "", name).rstrip("_")
            if kind == "con":
                params = r.tensor()
                layers.append(_Layer("con", params, tuple(r.int() for _ in range(7))))
            elif kind == "affine":
                layers.append(_Layer("affine", r.tensor()))
            elif kind in ("max_pool", "avg_pool"):
                layers.append(_Layer(kind, None, tuple(r.int() for _ in range(6))))
            elif kind == "fc":
                outputs, inputs = r.int(), r.int()
                layers.append(_Layer("fc", r.tensor(), (outputs, inputs)))
            elif kind == "input_rgb_image_sized":
                layers.append(_Layer("input", None, (), (r.float(), r.float(), r.float())))
                layers[-1].ints = (r.int(), r.int())
            elif kind == "loss_metric":
                pass  # outermost: stored first, no parameters needed
            else:
                layers.append(_Layer(kind))
            pos = max(r.pos, m.end())
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: not a readable dlib network file ({e})") from e
    kinds = [x.kind for x in layers]
    if kinds[:5] != ["input", "con", "affine", "relu", "max_pool"] or kinds[-2:] != ["avg_pool", "fc"] \
            or kinds.count("con") != 29:
        raise ValueError(f"{path}: not dlib's face recognition ResNet (layers: {' '.join(kinds[:8])} ...)")
    return layers


class _Conv(nn.Module):
    def __init__(self, layer: _Layer, cin: int) -> None:
        super().__init__()
        nf, nr, nc, sy, sx, py, px = layer.ints
        p = torch.from_numpy(layer.params.reshape(-1))
        self.weight = nn.Parameter(p[: nf * cin * nr * nc].reshape(nf, cin, nr, nc), requires_grad=False)
        self.bias = nn.Parameter(p[nf * cin * nr * nc:].clone(), requires_grad=False)
        self.stride, self.padding = (sy, sx), (py, px)
        self.out_channels = nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _Affine(nn.Module):
    def __init__(self, layer: _Layer) -> None:
        super().__init__()
        p = torch.from_numpy(layer.params.reshape(2, -1))
        self.gamma = nn.Parameter(p[0].clone()[None, :, None, None], requires_grad=False)
        self.beta = nn.Parameter(p[1].clone()[None, :, None, None], requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, each tensor zero where it has no value."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]
    out = a.new_zeros(shape)
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


class _Block(nn.Module):
    """con -> affine -> relu -> con -> affine (+ shortcut: the input, or its 2x2 average pool
    in a downsampling block) -> relu."""

    def __init__(self, c1: _Conv, a1: _Affine, c2: _Conv, a2: _Affine, pool: _Layer | None) -> None:
        super().__init__()
        self.c1, self.a1, self.c2, self.a2 = c1, a1, c2, a2
        self.pool = pool.ints if pool is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a2(self.c2(F.relu(self.a1(self.c1(x)))))
        if self.pool is not None:
            nr, nc, sy, sx, py, px = self.pool
            x = F.avg_pool2d(x, (nr, nc), (sy, sx), (py, px), count_include_pad=False)
        return F.relu(_add_prev(y, x))


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet. forward: face chips uint8 RGB [B, 150, 150, 3] (any
    device) -> embeddings float32 [B, 128]."""

    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(layers[0].floats, dtype=torch.float32)[None, :, None, None])
        rest = layers[1:]
        self.stem = _Conv(rest[0], 3)
        self.stem_affine = _Affine(rest[1])
        self.stem_pool = rest[3].ints
        i, cin = 4, self.stem.out_channels
        blocks = []
        while rest[i].kind == "con":
            c1 = _Conv(rest[i], cin)
            a1 = _Affine(rest[i + 1])
            c2 = _Conv(rest[i + 3], c1.out_channels)
            a2 = _Affine(rest[i + 4])
            pool = rest[i + 5] if rest[i + 5].kind == "avg_pool" else None
            blocks.append(_Block(c1, a1, c2, a2, pool))
            i += 8 if pool is not None else 7  # ... [avg_pool] add_prev relu
            cin = c2.out_channels
        self.blocks = nn.ModuleList(blocks)
        fc = rest[i + 1]
        outputs, inputs = fc.ints
        self.fc = nn.Parameter(torch.from_numpy(fc.params.reshape(inputs, outputs)), requires_grad=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.dtype != torch.uint8 or chips.ndim != 4 or tuple(chips.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"face chips must be uint8 [B, 150, 150, 3], got {chips.dtype} {tuple(chips.shape)}")
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = F.relu(self.stem_affine(self.stem(x)))
        nr, nc, sy, sx, py, px = self.stem_pool
        x = F.max_pool2d(x, (nr, nc), (sy, sx), (py, px))
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3)) @ self.fc


def weights_file() -> Path:
    """dlib_face_recognition_resnet_model_v1.dat from the installed ``face-recognition-models``
    package (located without importing it), or the file named by ``$EXE_STREAM_DLIB_WEIGHTS``;
    ValueError saying what to install when missing."""
    return package_weights(
        "EXE_STREAM_DLIB_WEIGHTS", "face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat",
        "identity embeddings need dlib_face_recognition_resnet_model_v1.dat from the package "
        "face-recognition-models (pip install 'exe-stream[identity]')")


_LOADED: dict[str, DlibResNet] = {}


def load_encoder(device: torch.device | str = "cpu") -> DlibResNet:
    """The encoder in eval mode on ``device`` (read once per device)."""
    key = str(device)
    if key not in _LOADED:
        _LOADED[key] = DlibResNet(read_dlib_net(weights_file())).eval().to(device)
    return _LOADED[key]


# Largest embedding difference between CUDA and the CPU on the first batch (TF32 convolutions
# move embeddings by ~1e-3; two faces are one person below a distance of 0.6).
CUDA_TOLERANCE = 0.01


def _accelerated(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _embed(net: DlibResNet, x: torch.Tensor) -> torch.Tensor:
    dev = next(net.parameters()).device
    return net(x.to(dev)).float().cpu()


def _fast_embed(net: DlibResNet, x: torch.Tensor) -> torch.Tensor:
    """The accelerated path: the encoder on its CUDA device (the tests replace it with faulty ones)."""
    return _embed(net, x)


@torch.inference_mode()
def embed_chips(chips: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", batch: int = 64) -> np.ndarray:
    """Embeddings float32 [B, 128] of aligned face chips uint8 RGB [B, 150, 150, 3]. On CUDA
    the first batch is checked against the CPU (failsafe component "identity-cuda")."""
    net = load_encoder(device)
    x = torch.as_tensor(chips)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        if _accelerated(device):
            out.append(failsafe.current().run(
                "identity-cuda", lambda: _fast_embed(net, xb), lambda: _embed(load_encoder("cpu"), xb),
                failsafe.max_abs_diff, CUDA_TOLERANCE))
        else:
            out.append(_embed(net, xb))
    return torch.cat(out).numpy() if out else np.zeros((0, 128), np.float32)


# Face chips from a scan's frames ---------------------------------------------------------

# Where the full-range BlazeFace detector puts its right-eye, left-eye, nose-tip and mouth
# keypoints on dlib's aligned chips (get_face_chip, 150x150, padding 0.25), in chip pixels:
# the mean over the 8 chips of the tests' real faces (tests/data photos, carphone frames) that
# it detected. A face of a scan is aligned by the least-squares similarity (rotation, scale,
# shift) that takes its keypoints to these, so its chip is laid out like dlib's.
BLAZEFACE_TEMPLATE = np.array([[51.80, 50.56], [97.63, 55.06], [72.88, 80.27], [71.03, 101.15]])


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (no reflection) taking points src [P, 2] to dst [P, 2]:
    (A [2, 2], t [2]) with dst ~ src @ A.T + t."""
    sc, dc = src.mean(0), dst.mean(0)
    s, d = src - sc, dst - dc
    denom = (s ** 2).sum()
    a = (s * d).sum() / denom
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / denom
    m = np.array([[a, -b], [b, a]])
    return m, dc - sc @ m.T


def face_chips(frames, faces) -> torch.Tensor:
    """Aligned 150x150 chips uint8 RGB [N, 150, 150, 3] (CPU) of a FaceBatch's faces, from the
    frames' YUV planes (only frames with faces are converted), bilinear, zeros outside."""
    from .roi import yuv_to_rgb

    n = len(faces)
    if n == 0:
        return torch.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), dtype=torch.uint8)
    h, w = frames.height, frames.width
    used, rows = torch.unique(faces.frame_row, return_inverse=True)
    dev = frames.device
    idx = used.to(dev)
    rgb = yuv_to_rgb(frames.y[idx], frames.u[idx], frames.v[idx], frames.matrix, frames.full_range)
    kp = faces.keypoints[:, :4].numpy().astype(np.float64) * np.array([w, h])
    centres = (np.arange(CHIP_SIZE) + 0.5)
    q = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)  # chip pixel centres (x, y)
    grids = []
    for i in range(n):
        m, t = _similarity(BLAZEFACE_TEMPLATE, kp[i])  # chip -> image pixels
        p = q @ m.T + t
        grids.append(np.stack([2 * p[:, 0] / w - 1, 2 * p[:, 1] / h - 1], -1).reshape(CHIP_SIZE, CHIP_SIZE, 2))
    grid = torch.from_numpy(np.stack(grids)).to(dev, torch.float32)
    chips = F.grid_sample(rgb[rows.to(dev)], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (chips * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def embed_faces(frames, faces, device: torch.device | str = "cpu") -> np.ndarray:
    """Identity embeddings float32 [N, 128] of a FaceBatch's faces (aligned by their keypoints)."""
    return embed_chips(face_chips(frames, faces), device)


# Characters ------------------------------------------------------------------------------


def characters(track_id: np.ndarray, embeddings: np.ndarray, threshold: float = SAME_PERSON_DISTANCE) -> np.ndarray:
    """Character id (int32 [N]) of each face: its track's mean embedding clustered with the
    film's other tracks by average-linkage agglomerative clustering (scipy), cut at
    ``threshold`` (dlib's same-person distance, 0.6): tracks closer than that on average are one
    character. Ids are 0, 1, ... in order of first appearance of a character's first track.

    track_id: int [N] per face; embeddings: float32 [N, 128] per face."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(track_id)
    if n == 0:
        return np.zeros(0, np.int32)
    tracks, inverse = np.unique(track_id, return_inverse=True)
    means = np.stack([embeddings[inverse == k].mean(0) for k in range(len(tracks))])
    if len(tracks) == 1:
        cluster = np.zeros(1, np.int64)
    else:
        cluster = fcluster(linkage(means, method="average", metric="euclidean"), t=threshold, criterion="distance")
    per_face = cluster[inverse]
    first: dict[int, int] = {}
    for c in per_face.tolist():  # faces come in film order
        first.setdefault(c, len(first))
    return np.array([first[c] for c in per_face.tolist()], np.int32)


# Cast: naming characters from reference photos ------------------------------------------

# The column a cast adds to the faces dataset (scan --cast).
CAST_FIELDS = pa.schema([("character_name", pa.string())])


@dataclass
class Cast:
    """Reference faces: names [K] and their embeddings float32 [K, 128]."""

    names: list[str]
    embeddings: np.ndarray
    source: str  # the CSV file and a hash of its rows and photos (part of the scan's resume key)

    def __repr__(self) -> str:
        return f"Cast({len(self.names)} people from {self.source})"


def _photo_face(path: str, data: bytes, device: torch.device | str) -> np.ndarray:
    """The embedding of the largest face in a photo (``data``, the bytes of the file ``path``;
    its first frame); ValueError naming ``path`` when it cannot be read or shows no face."""
    import io

    import av

    from .decode.planes import rgb_to_i420
    from .detect import DetectorOptions, detect_faces
    from .types import FaceBatch, FrameBatch

    try:
        with av.open(io.BytesIO(data)) as c:
            rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError, StopIteration) as e:
        raise ValueError(f"{path}: cannot read the photo ({e})") from e
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    y, u, v = rgb_to_i420(torch.from_numpy(np.ascontiguousarray(rgb))[None], full_range=True, matrix="bt601")
    frames = FrameBatch(y=y, u=u, v=v, frame_index=torch.zeros(1, dtype=torch.int64),
                        pts_seconds=torch.zeros(1, dtype=torch.float64), is_keyframe=torch.zeros(1, dtype=torch.bool),
                        matrix="bt601", full_range=True)
    faces = detect_faces(frames, DetectorOptions())
    if len(faces) == 0:
        raise ValueError(f"{path}: no face found in the cast photo")
    k = faces.face_index == 0
    one = FaceBatch(faces.frame_row[k], faces.face_index[k], faces.boxes[k], faces.scores[k], faces.keypoints[k])
    return embed_faces(frames, one, device)[0]


@dataclass(frozen=True)
class CastFiles:
    """A cast CSV and its photos, read into memory: what a scan's driver hands to workers that
    may not see its files (``scan --ray``), so every worker embeds the same photos."""

    csv: str  # the CSV's path as given (named in messages)
    people: tuple[tuple[str, str, bytes], ...]  # per row: name, photo path (for messages), photo bytes
    digest: str  # SHA-256 (hex) of the CSV's text and every photo's bytes, in row order

    @property
    def source(self) -> str:
        """The CSV's file name and a hash of its rows and photos (part of the scan's resume key)."""
        return f"{Path(self.csv).name}:{self.digest[:16]}"

    def __repr__(self) -> str:
        return f"CastFiles({len(self.people)} people from {self.source})"


def read_cast(path: str | Path) -> CastFiles:
    """A cast CSV (columns ``name`` and ``photo``; a photo path is relative to the CSV's folder)
    and its photos' bytes. Raises ValueError naming the file (and row) for a missing column or
    photo."""
    import csv
    import hashlib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the cast file ({e.strerror or e})") from e
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"name", "photo"} <= set(rows[0]):
        raise ValueError(f"{path}: a cast file needs the columns name,photo (one row per person)")
    h = hashlib.sha256(text.encode())
    people = []
    for i, row in enumerate(rows, start=2):
        name, photo = (row.get("name") or "").strip(), (row.get("photo") or "").strip()
        if not name or not photo:
            raise ValueError(f"{path}: line {i}: name and photo are both needed")
        p = (path.parent / photo) if not Path(photo).is_absolute() else Path(photo)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: line {i}: photo {photo!r} not found") from e
        h.update(data)
        people.append((name, str(p), data))
    return CastFiles(str(path), tuple(people), h.hexdigest())


_CASTS: dict[tuple[str, str], Cast] = {}


def embed_cast(files: CastFiles, device: torch.device | str = "cpu") -> Cast:
    """Each person's embedding from the largest face in their photo (computed once per cast
    content and device). Raises ValueError naming a photo that cannot be read or shows no face."""
    key = (files.digest, str(device))
    if key not in _CASTS:
        emb = np.stack([_photo_face(p, data, device) for _, p, data in files.people])
        _CASTS[key] = Cast([n for n, _, _ in files.people], emb.astype(np.float32), files.source)
    return _CASTS[key]


def load_cast(path: str | Path, device: torch.device | str = "cpu") -> Cast:
    """A cast CSV read (``read_cast``) and embedded (``embed_cast``)."""
    return embed_cast(read_cast(path), device)


def name_characters(character_id: np.ndarray, embeddings: np.ndarray, cast: Cast,
                    threshold: float = SAME_PERSON_DISTANCE) -> list[str | None]:
    """Per face, the cast name of its character: the person whose photo is nearest the
    character's mean embedding, if nearer than ``threshold``; else None."""
    names: dict[int, str | None] = {}
    for c in np.unique(character_id).tolist():
        mean = embeddings[character_id == c].mean(0)
        d = np.linalg.norm(cast.embeddings - mean, axis=1)
        names[c] = cast.names[int(d.argmin())] if len(d) and d.min() < threshold else None
    return [names[int(c)] for c in character_id]
