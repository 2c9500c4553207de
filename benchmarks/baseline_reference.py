"""The reference study's method, as the baseline every CPU figure is compared against.

OpenCV reads (decodes and converts to BGR) every frame; every N-th frame goes to MediaPipe's
face detector; each face is cropped with OpenCV and classified on its own (batch of one)
by the same emotion model the scan uses. Prints one JSON line with counts and timings.

    python benchmarks/baseline_reference.py FILM --every 100 [--model fer2013-minixception]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import mediapipe as mp
import numpy as np
import torch

from exe_stream.models import load_model


def run(path: str, every: int, model_name: str, model_selection: int) -> dict:
    model = load_model(model_name, torch.device("cpu"))
    card = model.card if hasattr(model, "card") else None
    h, w = card.input_size if card else (64, 64)
    gray = (card.colour == "gray") if card else True
    mean = np.asarray(card.mean if card else (0.5,), np.float32)
    std = np.asarray(card.std if card else (0.5,), np.float32)
    detector = mp.solutions.face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=0.5)
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise SystemExit(f"{path}: OpenCV cannot open it")
    frames = sampled = faces = 0
    t0 = time.perf_counter()
    t_model = 0.0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if frames % every == 0:
            sampled += 1
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            res = detector.process(rgb)
            for det in res.detections or []:
                bb = det.location_data.relative_bounding_box
                H, W = bgr.shape[:2]
                x0, y0 = max(0, int(bb.xmin * W)), max(0, int(bb.ymin * H))
                x1, y1 = min(W, int((bb.xmin + bb.width) * W)), min(H, int((bb.ymin + bb.height) * H))
                if x1 <= x0 or y1 <= y0:
                    continue
                crop = bgr[y0:y1, x0:x1]
                if gray:
                    img = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (w, h))[None]
                else:
                    img = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), (w, h)).transpose(2, 0, 1)
                x = (img.astype(np.float32) / 255.0 - mean[:, None, None]) / std[:, None, None]
                t = time.perf_counter()
                with torch.inference_mode():
                    model.predict(torch.from_numpy(x)[None])  # one face at a time
                t_model += time.perf_counter() - t
                faces += 1
        frames += 1
    wall = time.perf_counter() - t0
    return {"frames_read": frames, "frames_sampled": sampled, "faces": faces,
            "wall_s": wall, "classify_s": t_model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("film")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--model", default="fer2013-minixception")
    ap.add_argument("--model-selection", type=int, default=1, help="MediaPipe: 0 short range, 1 full range")
    a = ap.parse_args()
    print(json.dumps(run(a.film, a.every, a.model, a.model_selection)))


if __name__ == "__main__":
    main()
