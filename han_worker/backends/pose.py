"""Pose estimation (job kind ``pose``, queue ``pose``, Linux and Windows) with mediapipe 0.10.21.

The model is the legacy ``mediapipe.solutions.pose`` (BlazePose GHUM, ``model_complexity=1``) that the
mediapipe 0.10.21 wheel ships: it runs offline. Complexities 0 and 2 download their model on first use,
and newer mediapipe releases ship no model at all, hence the pin. mediapipe and OpenCV are imported
only when a job runs, so a worker without the extra still loads the backend registry; it then refuses
the ``pose`` queue with the reason from :meth:`PoseBackend.unavailable`.

The model is kept warm: each thread that runs pose jobs (the worker's serving thread) keeps two graphs
for as long as it lives, one for images (``static_image_mode``: every image a full detection, no state
between calls) and one for videos (tracking between frames), and the worker has
:meth:`PoseBackend.warm` build and run them once before it registers. No job sees another's state: the
video graph is reset (a new run of the same graph: fresh tracking and smoothing) before each video, and a
graph that raised is discarded and built again for the next job. Frames go through the graph one by one:
the legacy solution has no batch input, and tracking makes each video frame depend on the one before.

Input: exactly one input file, of any name (``image`` or ``video`` by convention). What it is comes
from its first bytes, never from its name or extension:

- an image: JPEG, PNG, BMP, TIFF or WebP (GIF, HEIC and AVIF are recognised and refused: this OpenCV
  build cannot decode them), at most ``MAX_IMAGE_BYTES`` bytes;
- a video: MP4/MOV, AVI, Matroska/WebM, at most ``MAX_FRAMES`` frames.

Every image or frame has at most ``MAX_PIXELS`` pixels. There are no parameters.

Output ``landmarks.json`` (UTF-8, written frame by frame so that a long video does not sit in memory)::

    {"schema": 1,
     "model": {"name": "mediapipe.solutions.pose", "variant": "pose_landmark_full",
               "model_complexity": 1, "mediapipe": "0.10.21"},
     "media": "image" | "video", "format": "JPEG" | "MP4" | ...,
     "fps": 25.0 | null,                            # nominal, as the video declares it; null for an image
     "landmark_names": ["nose", "left_eye_inner", ...],           # 33 names, the order of every frame
     "frames": [{"index": 0, "time_s": 0.0 | null,
                 "landmarks": [{"x": .., "y": .., "z": .., "visibility": ..}, ...33] | null}, ...],
     "image": {"width": W, "height": H}, "frame_count": N, "frames_with_person": K}

``x`` and ``y`` are normalised by the image width and height (slightly outside [0, 1] when a landmark
lies outside the picture); ``z`` is depth on roughly the scale of ``x``, origin at the midpoint of the
hips, smaller is nearer the camera; ``visibility`` is in [0, 1]. ``landmarks`` is null for a frame in
which no person was found. One person per frame: the model finds only one.

Summary (the ledger): ``media``, ``format``, ``frames``, ``frames_with_person``, ``mean_visibility``
(over every landmark of every frame with a person), ``width``, ``height``, ``ms_per_frame`` (the model's
time), ``decode_ms_per_frame`` (reading and decoding the input), ``model``.

Bad input raises :class:`JobFailed` with the reason (the job fails, the worker goes on): no input or
more than one, an empty file, content that is neither a supported image nor a video, a file that cannot
be decoded (truncated, corrupt), too large (bytes, pixels, frames), or no person in any frame. A
draining worker (``should_stop``) interrupts a video between frames with :class:`InterruptedError`, like
any interrupted attempt: the job is released and runs again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from han_worker.backends.base import LINUX, WINDOWS, JobContext, JobFailed, JobResult

if TYPE_CHECKING:
    from cv2.typing import MatLike

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.21"
INSTALL_HINT = f"install han_worker[pose] (mediapipe=={MEDIAPIPE_VERSION})"
MODEL = {
    "name": "mediapipe.solutions.pose",
    "variant": "pose_landmark_full",
    "model_complexity": 1,
    "mediapipe": MEDIAPIPE_VERSION,
}
SCHEMA = 1
OUTPUT_NAME = "landmarks.json"

MAX_IMAGE_BYTES = 200 * 1024 * 1024  # an image is read whole into memory before it is decoded
MAX_PIXELS = 50_000_000  # a 50-megapixel photo; an 8K video frame is 33 MP
MAX_FRAMES = 18_000  # 10 minutes at 30 fps, about 10 minutes of work at ~33 ms per frame
_SNIFF_BYTES = 16


@dataclass(frozen=True)
class _Format:
    name: str
    media: str  # "image", "video" or "unsupported"


_SIGNATURES: tuple[tuple[tuple[tuple[int, bytes], ...], _Format], ...] = (
    (((0, b"\xff\xd8\xff"),), _Format("JPEG", "image")),
    (((0, b"\x89PNG\r\n\x1a\n"),), _Format("PNG", "image")),
    (((0, b"BM"),), _Format("BMP", "image")),
    (((0, b"II*\x00"),), _Format("TIFF", "image")),
    (((0, b"MM\x00*"),), _Format("TIFF", "image")),
    (((0, b"RIFF"), (8, b"WEBP")), _Format("WebP", "image")),
    (((0, b"RIFF"), (8, b"AVI ")), _Format("AVI", "video")),
    (((0, b"GIF87a"),), _Format("GIF", "unsupported")),
    (((0, b"GIF89a"),), _Format("GIF", "unsupported")),
    # HEIC and AVIF photos are ISO media files like MP4: their brand tells them apart.
    *(
        (((4, b"ftyp"), (8, brand)), _Format("HEIC/AVIF", "unsupported"))
        for brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis")
    ),
    (((4, b"ftyp"),), _Format("MP4", "video")),
    # Old QuickTime files may start with another atom than ftyp.
    *((((4, atom),), _Format("MOV", "video")) for atom in (b"moov", b"mdat", b"wide", b"free")),
    (((0, b"\x1a\x45\xdf\xa3"),), _Format("Matroska", "video")),
)
# Containers whose frame count comes from an index: fewer decoded frames means a truncated file.
# Matroska's count is an estimate from duration and frame rate, so it proves nothing.
_EXACT_FRAME_COUNT = frozenset({"AVI", "MP4", "MOV"})


@dataclass(frozen=True)
class _Frame:
    index: int
    time_s: float | None
    rgb: MatLike  # mediapipe wants RGB


@dataclass
class _Tally:
    frames: int = 0
    with_person: int = 0
    visibility_sum: float = 0.0
    visibility_count: int = 0
    inference_s: float = 0.0
    decode_s: float = 0.0
    width: int = 0
    height: int = 0


class _Graph:
    """One mediapipe pose graph, built on first use and kept; discarded when it raises.

    A graph is closed when it is discarded or its holder goes (the thread ends, the backend is dropped):
    never collected on its own, since mediapipe's graph holds a callback that holds the graph."""

    def __init__(self, static_image_mode: bool) -> None:
        self.static_image_mode = static_image_mode
        self._pose: Any = None
        self._close: weakref.finalize[[], _Graph] | None = None
        self._used = False  # a frame went through since the graph was built or reset

    def start(self, solution: Any) -> _Graph:
        """Ready for a new input, in the state of a graph just built: a video's tracking starts over."""
        if self._pose is None:
            self._pose = solution.Pose(static_image_mode=self.static_image_mode, model_complexity=1)
            self._close = weakref.finalize(self, self._pose.close)
        elif self._used and not self.static_image_mode:
            # Closes the graph's run and starts a new one: tracking and smoothing begin again (a static
            # graph keeps no state between calls, so it needs none).
            self._pose.reset()
            self._used = False
        return self

    def process(self, rgb: MatLike) -> Any:
        self._used = True
        try:
            return self._pose.process(rgb)
        except Exception:  # its state is unknown now: the next job builds a new one
            self.discard()
            raise

    def discard(self) -> None:
        close, self._close, self._pose, self._used = self._close, None, None, False
        if close is not None:
            try:
                close()
            except Exception as exc:  # already broken; it goes either way
                log.debug("closing a discarded pose graph: %s", exc)


class _Graphs(threading.local):
    """The graphs of the thread that runs the jobs: built once per thread, gone with it."""

    def __init__(self) -> None:
        self.image = _Graph(static_image_mode=True)
        self.video = _Graph(static_image_mode=False)


@dataclass(frozen=True)
class PoseBackend:
    """33 body landmarks per frame of one image or video."""

    name: str = "pose"
    queue: str = "pose"
    platforms: frozenset[str] = field(default_factory=lambda: frozenset({LINUX, WINDOWS}))
    _graphs: _Graphs = field(default_factory=_Graphs, init=False, repr=False, compare=False)

    def unavailable(self) -> str | None:
        try:
            _import_libraries()
        except ImportError as exc:
            return f"{INSTALL_HINT}: {exc}"
        return None

    def warm(self) -> None:
        """Build this thread's two graphs and run a photo through each, so that the first job pays none of
        it: mediapipe initialises a graph's models at its first frame, and a photo of a person runs the
        landmark model too. The video graph is reset before its first video like before any other."""
        cv2, pose_solution = _libraries()
        photo = _warm_up_photo(cv2)
        for graph in (self._graphs.image, self._graphs.video):
            started = time.perf_counter()
            graph.start(pose_solution).process(photo)
            log.debug("pose graph (static_image_mode=%s) built and run once in %.3f s",
                      graph.static_image_mode, time.perf_counter() - started)  # fmt: skip

    def run(self, context: JobContext) -> JobResult:
        name, path = _single_input(context)
        media = _identify(name, path)
        cv2, pose_solution = _libraries()
        output = context.workdir / OUTPUT_NAME
        header = {"schema": SCHEMA, "model": MODEL, "media": media.media, "format": media.name}
        if media.media == "image":
            frames, header["fps"] = _image_frames(cv2, name, path, media), None
            graph = self._graphs.image
        else:
            frames, header["fps"] = _read_video(cv2, name, path, media)
            graph = self._graphs.video  # tracking between frames is faster and steadier
        header["landmark_names"] = [landmark.name.lower() for landmark in pose_solution.PoseLandmark]
        with _LandmarksWriter(output, header) as writer:
            tally = _estimate(frames, graph.start(pose_solution), writer, context.should_stop)
        if tally.with_person == 0:
            raise JobFailed(f"no person found in input {name!r} ({_frames_text(tally.frames)} examined)")
        summary = _summary(media, tally)
        context.log.info("pose: %s", summary)
        return JobResult(summary=summary, outputs={OUTPUT_NAME: output})


def _libraries() -> tuple[ModuleType, Any]:
    try:
        return _import_libraries()
    except ImportError as exc:  # the worker checks at start; this is a worker fault, not the job's
        raise RuntimeError(f"pose backend unavailable: {INSTALL_HINT}: {exc}") from exc


def _warm_up_photo(cv2: ModuleType) -> MatLike:
    """A photo of a person, decoded as a job's input is: matplotlib's public-domain ``grace_hopper.jpg``
    (mediapipe needs matplotlib, whose wheel ships it); a grey frame where it is missing, which warms all
    but the landmark model up."""
    import matplotlib.cbook  # noqa: PLC0415  (imported by mediapipe already)
    import numpy  # noqa: PLC0415  (installed with OpenCV)

    try:
        path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        photo = _decode_rgb(cv2, numpy.fromfile(path, dtype=numpy.uint8))
    except (OSError, ValueError) as exc:
        log.debug("no sample photo to warm the pose model up with (%s); a grey frame instead", exc)
        photo = None
    return photo if photo is not None else numpy.full((64, 64, 3), 128, dtype=numpy.uint8)


def _import_libraries() -> tuple[ModuleType, Any]:
    """cv2 and mediapipe's pose solution, imported on first use (the ``pose`` extra is optional)."""
    # OpenCV reads its decoder's pixel limit once, when it loads: set it first, so that a small file
    # declaring a huge image (a decompression bomb) fails before its memory is allocated.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
    import cv2  # noqa: PLC0415
    import mediapipe  # noqa: PLC0415

    if mediapipe.__version__ != MEDIAPIPE_VERSION:
        raise ImportError(f"mediapipe {mediapipe.__version__} is installed; its pose model is not bundled")
    from mediapipe.python.solutions import pose  # noqa: PLC0415

    return cv2, pose


def _single_input(context: JobContext) -> tuple[str, Path]:
    if len(context.inputs) != 1:
        got = ", ".join(sorted(context.inputs)) or "none"
        raise JobFailed(f"pose needs exactly one input file, an image or a video; got {got}")
    ((name, path),) = context.inputs.items()
    return name, path


def _identify(name: str, path: Path) -> _Format:
    """The input's format from its first bytes."""
    with path.open("rb") as stream:
        head = stream.read(_SNIFF_BYTES)
    if not head:
        raise JobFailed(f"input {name!r} is empty (0 bytes)")
    for signature, media in _SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in signature):
            if media.media == "unsupported":
                raise JobFailed(
                    f"input {name!r} is a {media.name} image, which cannot be read: send JPEG or PNG"
                )
            return media
    looks = "text" if _looks_like_text(head) else f"bytes {head[:8].hex(' ')}"
    raise JobFailed(
        f"input {name!r} is neither an image nor a video (it starts with {looks}); "
        "send a JPEG, PNG, BMP, TIFF or WebP image or an MP4, MOV, AVI, MKV or WebM video"
    )


def _looks_like_text(head: bytes) -> bool:
    # The sniffed bytes may end inside a multi-byte character: drop up to 3 bytes before giving up.
    for end in range(len(head), max(len(head) - 4, 0), -1):
        try:
            text = head[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(char.isprintable() or char in "\t\r\n" for char in text)
    return False


def _check_pixels(name: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise JobFailed(
            f"input {name!r} is too large: {width}x{height} pixels per frame, the limit is {MAX_PIXELS:,}"
        )


def _image_frames(cv2: ModuleType, name: str, path: Path, media: _Format) -> Iterator[_Frame]:
    """The image as the one frame of its input, decoded once, straight to RGB."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise JobFailed(
            f"input {name!r} is too large: {size:,} bytes, the limit for an image is {MAX_IMAGE_BYTES:,}"
        )
    import numpy  # noqa: PLC0415  (installed with OpenCV)

    # Decoding from memory, not cv2.imread: imread cannot open a path with non-ASCII characters on Windows.
    data = numpy.fromfile(path, dtype=numpy.uint8)
    try:
        image: MatLike | None = _decode_rgb(cv2, data)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise JobFailed(f"input {name!r} is too large: over {MAX_PIXELS:,} pixels") from exc
        raise JobFailed(f"input {name!r} cannot be decoded as a {media.name} image: {exc}") from exc
    del data
    if image is None:
        raise JobFailed(f"input {name!r} cannot be decoded as a {media.name} image: truncated or corrupt")
    height, width = image.shape[:2]
    _check_pixels(name, width, height)
    yield _Frame(0, None, image)


def _decode_rgb(cv2: ModuleType, data: Any) -> MatLike | None:
    """RGB pixels, the same as decoding to OpenCV's BGR and converting, without a second pass over them
    (OpenCV 4.10 and later decode to RGB directly)."""
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if rgb_flag is not None:
        decoded: MatLike | None = cv2.imdecode(data, rgb_flag)
        return decoded
    bgr: MatLike | None = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_video(
    cv2: ModuleType, name: str, path: Path, media: _Format
) -> tuple[Iterator[_Frame], float | None]:
    """Checks the video's declared size, then yields its frames one by one (and the nominal fps)."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise JobFailed(f"input {name!r} cannot be opened as a {media.name} video: truncated or corrupt")
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    try:
        if declared > MAX_FRAMES:
            raise JobFailed(f"input {name!r} is too long: {declared:,} frames, the limit is {MAX_FRAMES:,}")
        _check_pixels(
            name, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        )
    except JobFailed:
        capture.release()
        raise
    return _video_frames(cv2, capture, (name, media), declared, fps), (fps if fps > 0 else None)


def _video_frames(
    cv2: ModuleType, capture: Any, what: tuple[str, _Format], declared: int, fps: float
) -> Iterator[_Frame]:
    (name, media), index = what, 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            if index >= MAX_FRAMES:  # a stream may declare no frame count at all
                raise JobFailed(f"input {name!r} is too long: over {MAX_FRAMES:,} frames")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes video to BGR
            yield _Frame(index, round(index / fps, 6) if fps > 0 else None, rgb)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise JobFailed(f"input {name!r} is a {media.name} video of which no frame can be decoded")
    if media.name in _EXACT_FRAME_COUNT and index < declared:
        raise JobFailed(
            f"input {name!r} is a truncated or corrupt {media.name} video: "
            f"{index} of its {declared} frames can be decoded"
        )


def _estimate(
    frames: Iterator[_Frame], graph: _Graph, writer: _LandmarksWriter, should_stop: Callable[[], bool]
) -> _Tally:
    tally = _Tally()
    decoding = time.perf_counter()
    for frame in frames:
        started = time.perf_counter()
        tally.decode_s += started - decoding
        if should_stop():
            raise InterruptedError(f"the worker is draining; stopped after {_frames_text(tally.frames)}")
        tally.height, tally.width = frame.rgb.shape[:2]
        result = graph.process(frame.rgb)
        tally.inference_s += time.perf_counter() - started
        _count(tally, writer, frame, _landmarks(result.pose_landmarks))
        decoding = time.perf_counter()
    writer.tail = {
        "image": {"width": tally.width, "height": tally.height},
        "frame_count": tally.frames,
        "frames_with_person": tally.with_person,
    }
    return tally


def _count(
    tally: _Tally, writer: _LandmarksWriter, frame: _Frame, landmarks: list[dict[str, float]] | None
) -> None:
    tally.frames += 1
    if landmarks is not None:
        tally.with_person += 1
        tally.visibility_sum += sum(landmark["visibility"] for landmark in landmarks)
        tally.visibility_count += len(landmarks)
    writer.add({"index": frame.index, "time_s": frame.time_s, "landmarks": landmarks})


def _landmarks(found: Any) -> list[dict[str, float]] | None:
    if found is None:
        return None
    return [
        {
            "x": round(float(landmark.x), 6),
            "y": round(float(landmark.y), 6),
            "z": round(float(landmark.z), 6),
            "visibility": round(float(landmark.visibility), 6),
        }
        for landmark in found.landmark
    ]


def _summary(media: _Format, tally: _Tally) -> dict[str, object]:
    mean_visibility = tally.visibility_sum / tally.visibility_count if tally.visibility_count else 0.0
    return {
        "media": media.media,
        "format": media.name,
        "frames": tally.frames,
        "frames_with_person": tally.with_person,
        "mean_visibility": round(mean_visibility, 4),
        "width": tally.width,
        "height": tally.height,
        "ms_per_frame": round(1000 * tally.inference_s / max(tally.frames, 1), 1),
        "decode_ms_per_frame": round(1000 * tally.decode_s / max(tally.frames, 1), 1),
        "model": f"{MODEL['name']} ({MODEL['variant']}, mediapipe {MEDIAPIPE_VERSION})",
    }


def _frames_text(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"


class _LandmarksWriter:
    """Writes landmarks.json as frames arrive: the header fields, the frames, then ``tail``'s fields."""

    def __init__(self, path: Path, header: dict[str, object]) -> None:
        self._path = path
        self._header = header
        self._frames = 0
        self.tail: dict[str, object] = {}

    def __enter__(self) -> _LandmarksWriter:
        self._stream = self._path.open("w", encoding="utf-8")
        self._stream.write(json.dumps(self._header)[:-1] + ', "frames": [')
        return self

    def add(self, frame: dict[str, object]) -> None:
        self._stream.write(("," if self._frames else "") + "\n" + json.dumps(frame))
        self._frames += 1

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if kind is None:  # an interrupted file stays invalid JSON: nobody mistakes it for a result
                tail = json.dumps(self.tail)[1:] if self.tail else "}"
                self._stream.write("\n]" + (", " if self.tail else "") + tail + "\n")
        finally:
            self._stream.close()
