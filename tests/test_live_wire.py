"""live.wire: the page's frame messages (checks and plane layouts) and the latest-frame slot."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest
import torch

from exe_stream.decode.planes import rgb_to_i420
from exe_stream.live.wire import (
    FORMATS, MAGIC, FrameMessageError, LatestSlot, encode_frame, parse_header, payload_size, to_frame_batch,
)


def _planes(w: int, h: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    return (rng.integers(0, 256, (h, w), np.uint8), rng.integers(0, 256, (ch, cw), np.uint8),
            rng.integers(0, 256, (ch, cw), np.uint8))


@pytest.mark.parametrize("w,h", [(64, 48), (33, 17)])
def test_i420_frame_arrives_with_the_same_planes(w, h):
    y, u, v = _planes(w, h)
    msg = encode_frame(7, 1234.5, "I420", w, h, y.tobytes() + u.tobytes() + v.tobytes())
    header, payload = parse_header(msg)
    assert (header.seq, header.t, header.width, header.height, header.format) == (7, 1234.5, w, h, "I420")
    fb = to_frame_batch(header, payload, frame_index=7, pts_seconds=0.25)
    assert np.array_equal(fb.y[0].numpy(), y) and np.array_equal(fb.u[0].numpy(), u)
    assert np.array_equal(fb.v[0].numpy(), v)
    assert int(fb.frame_index[0]) == 7 and float(fb.pts_seconds[0]) == 0.25
    # No colour in the header: the decoders' default (BT.601 below 720 lines, limited range).
    assert (fb.matrix, fb.full_range) == ("bt601", False)


def test_nv12_is_split_into_u_and_v():
    w, h = 32, 16
    y, u, v = _planes(w, h, 1)
    uv = np.stack([u, v], axis=-1).reshape(h // 2, w)
    msg = encode_frame(0, 0.0, "NV12", w, h, y.tobytes() + uv.tobytes(), matrix="bt709", full_range=True)
    fb = to_frame_batch(*parse_header(msg), 0, 0.0)
    assert np.array_equal(fb.u[0].numpy(), u) and np.array_equal(fb.v[0].numpy(), v)
    assert (fb.matrix, fb.full_range) == ("bt709", True)


@pytest.mark.parametrize("fmt", ["RGBA", "BGRX"])
def test_rgb_frames_are_converted_to_i420(fmt):
    w, h = 20, 18
    rgb = np.random.default_rng(2).integers(0, 256, (h, w, 3), np.uint8)
    px = np.concatenate([rgb if fmt == "RGBA" else rgb[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=-1)
    fb = to_frame_batch(*parse_header(encode_frame(0, 0.0, fmt, w, h, px.tobytes())), 0, 0.0)
    y, u, v = rgb_to_i420(torch.from_numpy(rgb), full_range=True, matrix="bt601")
    assert torch.equal(fb.y[0], y) and torch.equal(fb.u[0], u) and torch.equal(fb.v[0], v)
    assert (fb.matrix, fb.full_range) == ("bt601", True)


def _raw(header: bytes, payload: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<I", len(header)) + header + payload


@pytest.mark.parametrize("msg,match", [
    ("text", "must be a binary message"),
    (b"GIF89a...", "must start with b'EXF1'"),
    (MAGIC + struct.pack("<I", 10**6) + b"{}", "header length 1000000 is out of range"),
    (_raw(b"{not json"), "header is not JSON"),
    (_raw(b"[1, 2]"), "must be a JSON object"),
    (_raw(json.dumps({"seq": 0, "t": 0, "w": 8, "h": 8, "format": "I420"}).encode()), "'w' must be an integer in 16..4096, got 8"),
    (_raw(json.dumps({"seq": 0, "t": 0, "w": 16, "h": 16, "format": "YUYV"}).encode()),
     "unknown pixel format 'YUYV'; accepted: " + ", ".join(FORMATS)),
    (_raw(json.dumps({"seq": 0, "t": "now", "w": 16, "h": 16, "format": "I420"}).encode()), "'t' must be a finite number"),
    (_raw(json.dumps({"seq": 0, "t": 0, "w": 16, "h": 16, "format": "I420", "matrix": "bt2020"}).encode()),
     "unknown colour matrix 'bt2020'"),
    (_raw(json.dumps({"seq": 0, "t": 0, "w": 16, "h": 16, "format": "I420"}).encode(), b"\0" * 100),
     "a 16x16 I420 frame has 384 bytes of pixels, got 100"),
])
def test_bad_messages_say_what_is_wrong(msg, match):
    with pytest.raises(FrameMessageError, match=match.replace("(", r"\(").replace("[", r"\[")):
        parse_header(msg)


def test_payload_sizes():
    assert payload_size("I420", 640, 480) == 640 * 480 * 3 // 2
    assert payload_size("NV12", 5, 3) == 15 + 2 * 3 * 2
    assert payload_size("RGBX", 4, 4) == 64


def test_latest_slot_keeps_only_the_newest_item():
    async def main():
        slot: LatestSlot[int] = LatestSlot()
        assert slot.put(1) is None
        assert slot.put(2) == 1  # 1 was never taken: dropped
        assert slot.put(3) == 2
        assert await slot.get() == 3
        assert slot.dropped == 2
        waiter = asyncio.create_task(slot.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # nothing to take: it waits
        slot.put(4)
        assert await asyncio.wait_for(waiter, 1) == 4
        assert slot.dropped == 2

    asyncio.run(main())
