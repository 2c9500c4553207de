"""BlazeFace (MediaPipe face detection, short and full range) in torch.

The network is MediaPipe's own, converted by ``exe_stream.detect.convert`` into a TFLite
graph description run by ``exe_stream.tflite.TFLiteGraph``. Around it, this module
reproduces MediaPipe 0.10.21's face_detection graph:

1. ImageToTensor: the whole frame letterboxed into the square input (aspect kept, centred,
   zero padding), scaled to [-1, 1]; the caller resamples with ``roi.resample`` on
   ``BlazeFace.letterbox_rois``, which reproduce OpenCV's sampling grid.
2. SsdAnchorsCalculator: anchors from the model's options (``ssd_anchors``).
3. TensorsToDetectionsCalculator: boxes and 6 keypoints decoded against the anchors with the
   model's scales (``decode``), scores = sigmoid(clip(logit, +-100)), kept when >= min score
   and the box has non-negative size.
4. NonMaxSuppressionCalculator, WEIGHTED, IoU: clusters of boxes overlapping the best
   remaining box by IoU > threshold are replaced by their score-weighted mean box and
   keypoints, keeping the best score (``weighted_nms``).
5. DetectionProjection: letterbox removed, so coordinates are normalised to the displayed
   frame (``remove_letterbox``).

Then the project's own ordering: by frame, largest box first, at most ``max_faces``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelError
from ..roi import letterbox_rois
from ..tflite import GRAPH_FILE, TFLiteGraph, load_graph
from ..types import FaceBatch
from . import ASSETS_DIR, DetectorOptions, check_detector_name


@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe SsdAnchorsCalculatorOptions (the subset the face models use)."""

    # Network input size (height, width) in pixels.
    input_size_height: int
    input_size_width: int
    # Anchor scales run linearly from min_scale to max_scale over the layers.
    min_scale: float
    max_scale: float
    # One feature map per stride; consecutive equal strides share one grid.
    strides: tuple[int, ...]
    # Anchor aspect ratios per layer.
    aspect_ratios: tuple[float, ...] = (1.0,)
    # > 0 adds one anchor per cell with scale sqrt(scale * next_scale) and this aspect ratio.
    interpolated_scale_aspect_ratio: float = 1.0
    # Anchor centre offset within a cell, in cells.
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    # Anchors of size 1 x 1 (the face models regress absolute sizes).
    fixed_anchor_size: bool = True
    # First layer uses the predefined (1, 2, 0.5) x (0.1, s, s) anchors.
    reduce_boxes_in_lowest_layer: bool = False


@dataclass(frozen=True)
class DecoderOptions:
    """MediaPipe TensorsToDetectionsCalculatorOptions (the subset the face models use)."""

    # Anchors (= rows of the model's outputs).
    num_boxes: int
    # Scales that divide the raw box/keypoint values (the input size in pixels).
    x_scale: float
    y_scale: float
    w_scale: float
    h_scale: float
    # Values per box row: 4 box values + 2 per keypoint.
    num_coords: int = 16
    # Keypoints per box (eyes, nose tip, mouth, ear tragions).
    num_keypoints: int = 6
    # Offsets of the box and first keypoint within a row.
    box_coord_offset: int = 0
    keypoint_coord_offset: int = 4
    # Logits are clipped to +-this before the sigmoid.
    score_clipping_thresh: float = 100.0
    # Raw box order: "xywh" (reverse_output_order: true) or "yxhw".
    box_format: str = "xywh"


# The options of MediaPipe 0.10.21's face_detection_{short,full}_range graphs.
MODEL_OPTIONS: dict[str, tuple[AnchorOptions, DecoderOptions]] = {
    "blazeface-short": (
        AnchorOptions(128, 128, 0.1484375, 0.75, (8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0),
        DecoderOptions(896, 128.0, 128.0, 128.0, 128.0),
    ),
    "blazeface-full": (
        AnchorOptions(192, 192, 0.1484375, 0.75, (4,), interpolated_scale_aspect_ratio=0.0),
        DecoderOptions(2304, 192.0, 192.0, 192.0, 192.0),
    ),
}


def ssd_anchors(o: AnchorOptions) -> torch.Tensor:
    """SSD anchors as MediaPipe's SsdAnchorsCalculator makes them.

    Returns float32 [N, 4] (x_center, y_center, w, h), normalised to the input, in the order
    of the model's output rows: layer by layer, row-major over the grid, anchors of a cell
    consecutive.
    """

    def scale_of(i: int) -> float:
        n = len(o.strides)
        return (o.min_scale + o.max_scale) * 0.5 if n == 1 else o.min_scale + (o.max_scale - o.min_scale) * i / (n - 1.0)

    rows: list[list[float]] = []
    layer = 0
    while layer < len(o.strides):
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < len(o.strides) and o.strides[last] == o.strides[layer]:
            scale = scale_of(last)
            if last == 0 and o.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for r in o.aspect_ratios:
                    ratios.append(r)
                    scales.append(scale)
                if o.interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == len(o.strides) - 1 else scale_of(last + 1)
                    scales.append((scale * nxt) ** 0.5)
                    ratios.append(o.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * r**0.5, s / r**0.5) for s, r in zip(scales, ratios)]  # (w, h)
        stride = o.strides[layer]
        fh = -(-o.input_size_height // stride)
        fw = -(-o.input_size_width // stride)
        for y in range(fh):
            for x in range(fw):
                for w, h in sizes:
                    cx = (x + o.anchor_offset_x) / fw
                    cy = (y + o.anchor_offset_y) / fh
                    rows.append([cx, cy, 1.0, 1.0] if o.fixed_anchor_size else [cx, cy, w, h])
        layer = last
    return torch.tensor(rows, dtype=torch.float32)


def decode(raw_boxes: torch.Tensor, raw_scores: torch.Tensor, anchors: torch.Tensor,
           o: DecoderOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw model outputs to boxes, keypoints and scores (TensorsToDetectionsCalculator).

    raw_boxes: float32 [B, N, num_coords]; raw_scores: float32 [B, N] logits; anchors: float32
    [N, 4] (x_center, y_center, w, h); all on one device. Returns (boxes float32 [B, N, 4]
    (x0, y0, x1, y1), keypoints float32 [B, N, K, 2] (x, y), scores float32 [B, N] in [0, 1]),
    normalised to the network input, on the same device.
    """
    ax, ay, aw, ah = anchors.unbind(-1)
    r = raw_boxes[..., o.box_coord_offset : o.box_coord_offset + 4]
    if o.box_format == "xywh":
        x, y, w, h = r.unbind(-1)
    else:
        y, x, h, w = r.unbind(-1)
    xc = x / o.x_scale * aw + ax
    yc = y / o.y_scale * ah + ay
    w = w / o.w_scale * aw
    h = h / o.h_scale * ah
    boxes = torch.stack((xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2), dim=-1)
    k0 = o.keypoint_coord_offset
    kp = raw_boxes[..., k0 : k0 + 2 * o.num_keypoints].reshape(*raw_boxes.shape[:-1], o.num_keypoints, 2)
    if o.box_format != "xywh":
        kp = kp.flip(-1)
    kx = kp[..., 0] / o.x_scale * aw[:, None] + ax[:, None]
    ky = kp[..., 1] / o.y_scale * ah[:, None] + ay[:, None]
    t = o.score_clipping_thresh
    scores = torch.sigmoid(raw_scores.clamp(-t, t))
    return boxes, torch.stack((kx, ky), dim=-1), scores


def box_iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one box [4] with boxes [M, 4] (x0, y0, x1, y1); 0 where they do not overlap or
    the union is empty. Returns float32 [M]."""
    iw = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp(min=0)
    ih = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp(min=0)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def weighted_nms(boxes: torch.Tensor, scores: torch.Tensor, keypoints: torch.Tensor,
                 iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MediaPipe's weighted non-maximum suppression of one image's detections.

    boxes: float32 [M, 4] (x0, y0, x1, y1); scores: float32 [M]; keypoints: float32 [M, K, 2].
    Repeatedly takes the best remaining detection; every remaining detection whose IoU with it
    is above ``iou_threshold`` (itself included) joins its cluster, which becomes one
    detection: the score-weighted mean box and keypoints, with the best score. Returns
    (boxes [D, 4], scores [D], keypoints [D, K, 2]) in decreasing score, on the input device.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    out_b, out_s, out_k = [], [], []
    remaining = torch.arange(scores.shape[0], device=scores.device)
    while remaining.numel():
        top = remaining[0]
        iou = box_iou(boxes[top], boxes[remaining])
        member = iou > iou_threshold
        cluster = remaining[member]
        if cluster.numel():
            w = scores[cluster]
            total = w.sum()
            out_b.append((boxes[cluster] * w[:, None]).sum(0) / total)
            out_k.append((keypoints[cluster] * w[:, None, None]).sum(0) / total)
        else:  # a degenerate (empty) box: kept as is; MediaPipe stops here
            out_b.append(boxes[top])
            out_k.append(keypoints[top])
        out_s.append(scores[top])
        if not bool(member.any()):
            break
        remaining = remaining[~member]
    if not out_s:
        return boxes[:0], scores[:0], keypoints[:0]
    return torch.stack(out_b), torch.stack(out_s), torch.stack(out_k)


def remove_letterbox(xy: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Map (x, y) pairs normalised to the letterboxed square input to the displayed frame.

    xy: float [..., 2k] alternating x, y (boxes (x0, y0, x1, y1) or keypoints). The square
    has side max(H, W) and is centred on the frame. Returns the same shape, normalised to W, H.
    """
    h, w = frame_hw
    side = float(max(h, w))
    scale = xy.new_tensor([side / w, side / h]).repeat(xy.shape[-1] // 2)
    return (xy - 0.5) * scale + 0.5


class BlazeFace(nn.Module):
    """A BlazeFace detector on one device (``Detector`` protocol of ``exe_stream.detect``)."""

    def __init__(self, name: str, graph: Mapping[str, Any], constants: Mapping[str, Any],
                 anchor_opts: AnchorOptions, decoder_opts: DecoderOptions, where: str) -> None:
        super().__init__()
        self.name = name
        self.net = TFLiteGraph(graph, constants, where=where)
        self.decoder_opts = decoder_opts
        self.input_size = (anchor_opts.input_size_height, anchor_opts.input_size_width)
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.5, 0.5, 0.5)
        anchors = ssd_anchors(anchor_opts)
        if anchors.shape[0] != decoder_opts.num_boxes:
            raise ModelError(f"{where}: {anchors.shape[0]} anchors for {decoder_opts.num_boxes} boxes")
        self.register_buffer("anchors", anchors, persistent=False)
        # Which graph output holds the boxes (last dim num_coords) and which the scores (1).
        shapes = [tuple(graph["tensors"][str(i)]["shape"]) for i in graph["outputs"]]
        want = {decoder_opts.num_coords, 1}
        if len(shapes) != 2 or {s[-1] for s in shapes} != want:
            raise ModelError(f"{where}: outputs {shapes} are not [1, N, {decoder_opts.num_coords}] and [1, N, 1]")
        self.box_output = 0 if shapes[0][-1] == decoder_opts.num_coords else 1

    def letterbox_rois(self, num_frames: int, height: int, width: int) -> torch.Tensor:
        """The letterbox ROIs of whole H x W frames, placed as MediaPipe samples them.

        The letterbox is the centred square of side S = max(H, W) (``roi.letterbox_rois``).
        MediaPipe's CPU ImageToTensor (OpenCV warpPerspective) maps output pixel *index* c to
        source coordinate x0 + c * S / n in pixel-centre units, whereas ``roi.resample`` samples
        pixel centres (c + 0.5) * S / n - 0.5 from the ROI's edge. Shifting the ROI by
        0.5 - 0.5 * S / n pixels makes the two grids coincide, which matters when the frame is
        shrunk several times (small faces). Boxes are still mapped back through the unshifted
        square, as MediaPipe does. Returns float32 [num_frames, 5] on the CPU.
        """
        rois = letterbox_rois(num_frames, height, width)
        side = float(max(height, width))
        rois[:, 1::2] += 0.5 - 0.5 * side / self.input_size[1]
        rois[:, 2::2] += 0.5 - 0.5 * side / self.input_size[0]
        return rois

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs for letterboxed input x float32 [B, 3, h, w] in [-1, 1]:
        (raw boxes float32 [B, N, 16], score logits float32 [B, N])."""
        outs = self.net(x)
        return outs[self.box_output], outs[1 - self.box_output][..., 0]

    @torch.no_grad()
    def detect(self, letterboxed: torch.Tensor, frame_hw: tuple[int, int], opts: DetectorOptions) -> FaceBatch:
        """Faces in a batch of letterboxed frames (one forward for the batch).

        letterboxed: float32 [B, 3, h, w] in [-1, 1] on this model's device; frame_hw: the
        displayed frame size (H, W). Returns a CPU FaceBatch sorted by frame, then by box area.
        """
        raw_boxes, logits = self.raw(letterboxed)
        boxes, kps, scores = decode(raw_boxes, logits, self.anchors, self.decoder_opts)
        wh = boxes[..., 2:] - boxes[..., :2]
        keep = (scores >= opts.threshold) & (wh >= 0).all(-1)
        b_idx, a_idx = keep.nonzero(as_tuple=True)
        # Only the few candidates leave the device.
        boxes = boxes[b_idx, a_idx].float().cpu()
        kps = kps[b_idx, a_idx].float().cpu()
        scores = scores[b_idx, a_idx].float().cpu()
        b_idx = b_idx.cpu()
        rows, out_b, out_s, out_k = [], [], [], []
        for b in torch.unique(b_idx).tolist():
            sel = b_idx == b
            fb, fs, fk = weighted_nms(boxes[sel], scores[sel], kps[sel], opts.nms_iou)
            fb = remove_letterbox(fb, frame_hw)
            fk = remove_letterbox(fk.reshape(fk.shape[0], -1), frame_hw).reshape(fk.shape)
            area = (fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1])
            order = torch.argsort(area, descending=True, stable=True)
            if opts.max_faces:
                order = order[: opts.max_faces]
            rows.append(torch.full((order.numel(),), b, dtype=torch.int64))
            out_b.append(fb[order])
            out_s.append(fs[order])
            out_k.append(fk[order])
        if not rows:
            return FaceBatch.empty(self.decoder_opts.num_keypoints)
        return FaceBatch(
            frame_row=torch.cat(rows),
            face_index=torch.cat([torch.arange(r.numel(), dtype=torch.int16) for r in rows]),
            boxes=torch.cat(out_b).contiguous(),
            scores=torch.cat(out_s).contiguous(),
            keypoints=torch.cat(out_k).contiguous(),
        )


def options_to_json(name: str) -> dict[str, Any]:
    """The anchor and decoder options of a registered BlazeFace, as stored in its card."""
    a, d = MODEL_OPTIONS[name]
    return {"anchors": asdict(a), "decoder": asdict(d)}


def options_from_json(extra: Mapping[str, Any], where: str) -> tuple[AnchorOptions, DecoderOptions]:
    try:
        a = dict(extra["anchors"])
        a["strides"] = tuple(a["strides"])
        a["aspect_ratios"] = tuple(a["aspect_ratios"])
        return AnchorOptions(**a), DecoderOptions(**extra["decoder"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"{where}: bad anchor/decoder options in the card: {e}") from e


@functools.lru_cache(maxsize=None)
def _load(name: str, device: str) -> BlazeFace:
    from ..models.card import load_card

    d = ASSETS_DIR / name
    card = load_card(d)
    graph_path = d / GRAPH_FILE
    try:
        graph_bytes = graph_path.read_bytes()
    except OSError as e:
        raise ModelError(f"{graph_path}: cannot read the detector graph: {e}") from e
    want = card.extra.get("graph_sha256")
    if want and hashlib.sha256(graph_bytes).hexdigest() != want:
        raise ModelError(f"{graph_path}: sha256 differs from the card's graph_sha256 {want}")
    graph, constants = load_graph(d)
    anchor_opts, decoder_opts = options_from_json(card.extra, str(d / "model.json"))
    model = BlazeFace(name, graph, constants, anchor_opts, decoder_opts, where=str(d))
    return model.to(torch.device(device)).eval()


def load_blazeface(name: str, device: torch.device | str = "cpu") -> BlazeFace:
    """The registered BlazeFace ``name`` on ``device``, loaded once per (name, device)
    from ``exe_stream/assets/models/<name>/`` (model.json, graph.json, weights.safetensors)."""
    check_detector_name(name)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _load(name, str(dev))


__all__ = [
    "AnchorOptions", "BlazeFace", "DecoderOptions", "MODEL_OPTIONS", "box_iou", "decode",
    "load_blazeface", "remove_letterbox", "ssd_anchors", "weighted_nms",
]
