"""What a packet's bytes say without decoding it: the picture type of an H.264 access unit, and
the encoder's settings string.

- ``h264_picture_type(data, nal_length_size)``: the ``slice_type`` of the first coded slice
  (ITU-T H.264 7.3.3: ``first_mb_in_slice`` ue(v), then ``slice_type`` ue(v)), as FFmpeg's
  AVPictureType numbers: 1 = I (IDR or not), 2 = P, 3 = B, 0 = no slice found. ``data`` is one
  packet, either length-prefixed NAL units (MP4, Matroska: ``nal_length_size`` bytes from the
  avcC record) or an Annex B byte stream (``nal_length_size`` 0: start codes, as in MPEG-TS).
  Only the first bytes of the slice header are read (emulation prevention removed).
  SP and SI slices count as P and I.
- ``encoder_settings(data)``: ``keyint``, ``min_keyint``, ``scenecut`` and ``intra_refresh``
  (x264's periodic intra refresh: no keyframes at all after the first) from the settings
  string x264 and x265 put into their stream (a user-data SEI of the first access unit, e.g.
  ``"x264 - core 164 ... options: ... keyint=250 keyint_min=25 scenecut=40 ..."``); empty for
  other encoders.

Every other codec gets its picture types from the container's keyframe flags alone (a demuxer
marks random-access pictures: HEVC IRAP, VP9/AV1 key frames, MPEG-4 I-VOPs).
"""

from __future__ import annotations

import re

PICT_UNKNOWN, PICT_I, PICT_P, PICT_B = 0, 1, 2, 3
# slice_type % 5 -> picture type: 0 P, 1 B, 2 I, 3 SP (as P), 4 SI (as I).
_SLICE_PICT = (PICT_P, PICT_B, PICT_I, PICT_P, PICT_I)
_SLICE_NAL_TYPES = (1, 5)  # coded slice of a non-IDR / an IDR picture
_SETTINGS = re.compile(rb"\b(keyint|keyint_min|min-keyint|scenecut|intra_refresh|intra-refresh)=(-?\d+)")
_NO_SCENECUT = re.compile(rb"\bno-scenecut\b")


def avcc_length_size(extradata: bytes | None) -> int:
    """NAL length field size (1, 2 or 4) from an avcC record, or 0 when ``extradata`` is not
    one (Annex B streams carry start codes instead)."""
    if extradata and len(extradata) >= 7 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    return 0


def _nal_units(data: bytes | memoryview, length_size: int):
    if length_size:  # slices of a memoryview are not copies
        i, n = 0, len(data)
        while i + length_size <= n:
            size = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if size <= 0 or i + size > n:
                yield data[i:n]  # a cut-off unit: its header may still be whole
                return
            yield data[i : i + size]
            i += size
    else:
        for unit in bytes(data).split(b"\x00\x00\x01")[1:]:
            yield unit


def _unescape(data: bytes) -> bytes:
    """RBSP from NAL payload bytes: drop each emulation-prevention 0x03 after 0x00 0x00."""
    if b"\x00\x00\x03" not in data:
        return data
    out, zeros = bytearray(), 0
    for b in data:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _read_ue(buf: bytes, pos: int) -> tuple[int, int]:
    """Exp-Golomb ue(v) at bit ``pos`` of ``buf``: (value, next bit position)."""
    zeros = 0
    while not (buf[pos >> 3] >> (7 - (pos & 7))) & 1:
        zeros += 1
        pos += 1
        if zeros > 31:
            raise ValueError("bad exp-golomb code")
    pos += 1
    value = 0
    for _ in range(zeros):
        value = (value << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
        pos += 1
    return (1 << zeros) - 1 + value, pos


def h264_picture_type(data: bytes | memoryview, nal_length_size: int) -> int:
    """Picture type of one H.264 packet (its bytes, or a memoryview of them) from its first
    slice header (see the module doc)."""
    for unit in _nal_units(data, nal_length_size):
        if not len(unit) or (unit[0] & 0x1F) not in _SLICE_NAL_TYPES:
            continue
        head = _unescape(bytes(unit[1:16]))
        try:
            _, pos = _read_ue(head, 0)  # first_mb_in_slice
            slice_type, _ = _read_ue(head, pos)
        except (IndexError, ValueError):
            return PICT_UNKNOWN
        return _SLICE_PICT[slice_type % 5] if slice_type <= 9 else PICT_UNKNOWN
    return PICT_UNKNOWN


def encoder_settings(data: bytes) -> dict[str, int]:
    """``keyint``, ``min_keyint``, ``scenecut``, ``intra_refresh`` found in an x264/x265 settings string in
    ``data`` (absent keys were not found; x265's ``no-scenecut`` gives scenecut 0)."""
    found: dict[str, int] = {}
    for name, value in _SETTINGS.findall(data):
        key = {b"keyint_min": "min_keyint", b"min-keyint": "min_keyint",
               b"intra-refresh": "intra_refresh"}.get(name, name.decode())
        found.setdefault(key, int(value))
    if "scenecut" not in found and _NO_SCENECUT.search(data):
        found["scenecut"] = 0
    return found
