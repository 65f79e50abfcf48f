"""The bare model, for the pose benchmark: one process, one warm mediapipe graph, no job system.

    python -m tests.bench.pose_bare image|video INPUTS_JSON

``INPUTS_JSON`` holds the list of input files, processed in that order. The script first times what a job
paid before the model was kept warm (a new graph built and run on the first input, a few times), then
warms its own graph up as the worker does (built, one grey frame), prints ``ready`` and waits for a line on
stdin, so that two processes start together and no warm-up is counted. Then for each input it reads the
file, decodes it and runs the model: an image decoded straight to RGB as the pose backend decodes it, a
video frame by frame with the graph reset before each video (a fresh tracking state, as the backend does).
It prints one JSON line: the wall-clock (``time.time()``) start of the first input and end of the last,
each input's milliseconds, the frames processed, and the decode and inference milliseconds in all.

It runs as the cluster user with the venv the workers use: same mediapipe, same OpenCV.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy
from mediapipe.python.solutions import pose as pose_solution

NEW_GRAPH_RUNS = 4  # the first pays the process's one-time costs as well; the others are a job's price


def decode_image(path: Path) -> Any:
    return cv2.imdecode(numpy.fromfile(path, dtype=numpy.uint8), cv2.IMREAD_COLOR_RGB)


def new_graph_ms(path: Path, static: bool) -> list[float]:
    """Milliseconds to build a graph, run it on the first frame of ``path`` and close it: a job's price
    when every job built its own."""
    rgb = decode_image(path) if static else first_video_frame(path)
    times = []
    for _run in range(NEW_GRAPH_RUNS):
        started = time.perf_counter()
        with pose_solution.Pose(static_image_mode=static, model_complexity=1) as graph:
            graph.process(rgb)
        times.append((time.perf_counter() - started) * 1000)
    return times


def first_video_frame(path: Path) -> Any:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, bgr = capture.read()
    capture.release()
    assert ok, f"{path}: no frame"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Tally:
    def __init__(self) -> None:
        self.frames = 0
        self.decode_s = 0.0
        self.inference_s = 0.0

    def frame(self, graph: Any, decode: Any) -> bool:
        """Decode one frame (``decode()`` returns it or None at the end) and run the model on it."""
        started = time.perf_counter()
        rgb = decode()
        decoded = time.perf_counter()
        self.decode_s += decoded - started
        if rgb is None:
            return False
        graph.process(rgb)
        self.inference_s += time.perf_counter() - decoded
        self.frames += 1
        return True


def run_image(graph: Any, path: Path, tally: Tally) -> None:
    tally.frame(graph, lambda: decode_image(path))


def run_video(graph: Any, path: Path, tally: Tally) -> None:
    graph.reset()  # a fresh tracking state for each video, as the backend gives every video job
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)

    def next_frame() -> Any:
        ok, bgr = capture.read()
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None

    try:
        while tally.frame(graph, next_frame):
            pass
    finally:
        capture.release()


def main(argv: list[str]) -> int:
    mode, inputs = argv[0], [Path(path) for path in json.loads(Path(argv[1]).read_text())]
    static = mode == "image"
    cold = new_graph_ms(inputs[0], static)
    started = time.perf_counter()
    graph = pose_solution.Pose(static_image_mode=static, model_complexity=1)
    graph.process(numpy.full((64, 64, 3), 128, dtype=numpy.uint8))  # the worker's warm-up
    warm_s = time.perf_counter() - started
    print("ready", flush=True)
    sys.stdin.readline()
    tally, per_input, first_start = Tally(), [], time.time()
    for path in inputs:
        began = time.perf_counter()
        (run_image if static else run_video)(graph, path, tally)
        per_input.append((time.perf_counter() - began) * 1000)
    last_finish = time.time()
    graph.close()
    print(json.dumps({
        "first_start": first_start, "last_finish": last_finish, "per_input_ms": per_input,
        "frames": tally.frames, "decode_ms": tally.decode_s * 1000, "inference_ms": tally.inference_s * 1000,
        "warm_up_s": warm_s, "new_graph_ms": cold,
    }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
