"""The pose backend on real photos and videos, through its ``run()``, as the worker calls it.

The photo of a person is matplotlib's sample ``grace_hopper.jpg`` (a public-domain US Navy portrait):
matplotlib is already needed to import mediapipe, so the tests need nothing beyond the ``pose`` extra.
Videos are built from it with OpenCV's VideoWriter. Tests that need mediapipe are skipped, with the
reason, where the extra is not installed; the input checks that come before any decoding run anyway.

The module's backend is warm: every test runs on the graphs the tests before it used, as a worker's jobs do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from han_worker.backends import pose as pose_module
from han_worker.backends.base import JobContext, JobFailed, JobResult
from han_worker.backends.pose import INSTALL_HINT, OUTPUT_NAME, PoseBackend

BACKEND = PoseBackend()
# Asked once, before this module imports OpenCV: it also sets OpenCV's decoder pixel limit.
UNAVAILABLE = BACKEND.unavailable()
needs_pose = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"pose extra missing: {UNAVAILABLE}")
if UNAVAILABLE is None:
    import cv2
    import matplotlib.cbook
    import numpy

FPS = 10.0


def run(
    tmp_path: Path,
    inputs: Mapping[str, Path],
    should_stop: Callable[[], bool] = lambda: False,
    backend: PoseBackend = BACKEND,
) -> JobResult:
    scratch = tmp_path / "work"
    shutil.rmtree(scratch, ignore_errors=True)  # a new job's scratch directory, as the worker makes it
    tmp_path.mkdir(parents=True, exist_ok=True)
    context = JobContext(
        job_id="job-1",
        kind="pose",
        params={},
        inputs=inputs,
        scratch=scratch,
        log=logging.getLogger("test.pose"),
        should_stop=should_stop,
    )
    return backend.run(context)


def landmarks_document(result: JobResult) -> dict[str, Any]:
    assert set(result.outputs) == {OUTPUT_NAME}
    document: dict[str, Any] = json.loads(result.outputs[OUTPUT_NAME].read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def photo() -> Path:
    """A real photo of one person, 512x600 JPEG."""
    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def frames(photo: Path) -> dict[str, Any]:
    person = cv2.imread(str(photo))
    return {"person": person, "gray": numpy.full_like(person, 128)}


def write_video(path: Path, images: list[Any], fourcc: str = "MJPG") -> Path:
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), FPS, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.name}"
    for image in images:
        writer.write(image)
    writer.release()
    return path


def encode(image: Any, extension: str) -> bytes:
    ok, data = cv2.imencode(extension, image)
    assert ok
    return bytes(data.tobytes())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def moving_clip(path: Path, image: Any, step: tuple[int, int], count: int = 12) -> Path:
    """The person moving across the picture, ``step`` pixels a frame: tracking and smoothing carry state
    from frame to frame, so state left over from an earlier video would change the landmarks."""
    height, width = image.shape[:2]
    shifts = [numpy.float32([[1, 0, step[0] * index], [0, 1, step[1] * index]]) for index in range(count)]
    grey = (90, 90, 90)
    return write_video(
        path, [cv2.warpAffine(image, shift, (width, height), borderValue=grey) for shift in shifts]
    )


def resident_mib() -> float:
    """This process's resident memory (Linux)."""
    pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- a person is found ------------------------------------------------------------------------------------


@needs_pose
@pytest.mark.parametrize("as_png", [False, True], ids=["jpeg", "png-named-jpg"])
def test_a_photo_of_a_person_gives_33_landmarks(
    tmp_path: Path, photo: Path, frames: dict[str, Any], as_png: bool
) -> None:
    # The type comes from the content: a PNG named .jpg is read as the PNG it is.
    source = write(tmp_path / "photo.jpg", encode(frames["person"], ".png")) if as_png else photo

    result = run(tmp_path, {"image": source})

    document = landmarks_document(result)
    assert document["schema"] == 1
    assert document["media"] == "image"
    assert document["format"] == ("PNG" if as_png else "JPEG")
    assert document["model"]["model_complexity"] == 1
    assert document["model"]["mediapipe"] == "0.10.21"
    assert document["image"] == {"width": 512, "height": 600}
    assert document["fps"] is None
    assert len(document["landmark_names"]) == 33
    assert document["landmark_names"][0] == "nose"
    (frame,) = document["frames"]
    assert frame["index"] == 0
    assert len(frame["landmarks"]) == 33
    for landmark in frame["landmarks"]:
        assert set(landmark) == {"x", "y", "z", "visibility"}
        assert 0.0 <= landmark["visibility"] <= 1.0
    nose = frame["landmarks"][0]
    assert 0.0 < nose["x"] < 1.0
    assert 0.0 < nose["y"] < 1.0
    assert result.summary["frames"] == 1
    assert result.summary["frames_with_person"] == 1
    assert 0.0 < float(str(result.summary["mean_visibility"])) <= 1.0
    print(
        f"pose: {result.summary['ms_per_frame']} ms for one {document['format']} image (first frame of a graph)"
    )


@needs_pose
@pytest.mark.parametrize(
    ("fourcc", "suffix", "container"), [("MJPG", ".avi", "AVI"), ("mp4v", ".mp4", "MP4")]
)
def test_a_video_gives_one_entry_per_frame(
    tmp_path: Path, frames: dict[str, Any], fourcc: str, suffix: str, container: str
) -> None:
    person, gray = frames["person"], frames["gray"]
    video = write_video(tmp_path / f"clip{suffix}", [person, person, person, gray, gray], fourcc)

    result = run(tmp_path, {"video": video})

    document = landmarks_document(result)
    assert document["media"] == "video"
    assert document["format"] == container
    assert document["fps"] == pytest.approx(FPS)
    assert document["frame_count"] == 5
    assert [frame["index"] for frame in document["frames"]] == [0, 1, 2, 3, 4]
    assert [frame["time_s"] for frame in document["frames"]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    found = [frame["landmarks"] is not None for frame in document["frames"]]
    assert found == [True, True, True, False, False]
    assert all(len(frame["landmarks"]) == 33 for frame in document["frames"][:3])
    assert result.summary["frames"] == 5
    assert result.summary["frames_with_person"] == 3
    print(f"pose: {result.summary['ms_per_frame']} ms per frame of the {container} video")


@needs_pose
def test_a_draining_worker_stops_a_video_between_frames(tmp_path: Path, frames: dict[str, Any]) -> None:
    video = write_video(tmp_path / "clip.avi", [frames["person"]] * 6)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # two frames done, then the worker drains

    with pytest.raises(InterruptedError, match="stopped after 2 frames"):
        run(tmp_path, {"video": video}, should_stop)
    assert len(asked) == 3


# --- a warm model -----------------------------------------------------------------------------------------


@needs_pose
def test_a_job_run_warm_after_other_jobs_gives_the_landmarks_of_a_cold_run(
    tmp_path: Path, photo: Path, frames: dict[str, Any]
) -> None:
    person, mirrored = frames["person"], cv2.flip(frames["person"], 1)
    jobs = {"image": photo, "video": moving_clip(tmp_path / "walk.avi", person, (-4, 3))}
    others = [
        moving_clip(tmp_path / "other.avi", mirrored, (5, 2)),
        write(tmp_path / "mirrored.png", encode(mirrored, ".png")),
        write_video(tmp_path / "empty-room.avi", [frames["gray"]] * 2),  # fails: no person
        jobs["video"],
    ]
    cold = {media: landmarks_document(run(tmp_path / f"cold-{media}", {media: path}, backend=PoseBackend()))
            for media, path in jobs.items()}  # fmt: skip

    warm = PoseBackend()
    warm.warm()
    for index, path in enumerate(others):
        with contextlib.suppress(JobFailed):  # the empty room
            run(tmp_path / f"before-{index}", {"input": path}, backend=warm)
    stopped_after_5: list[int] = []  # a video interrupted mid-way leaves its tracking where it was
    with pytest.raises(InterruptedError):
        run(tmp_path / "interrupted", {"video": others[0]}, lambda: len(stopped_after_5) > 5 or
            bool(stopped_after_5.append(1)), backend=warm)  # fmt: skip
    image_graph = warm._graphs.image._pose  # private: that the same graph runs every job is the point
    warm_documents = {media: landmarks_document(run(tmp_path / f"warm-{media}", {media: path}, backend=warm))
                      for media, path in jobs.items()}  # fmt: skip

    assert warm._graphs.image._pose is image_graph, "the image graph is kept between jobs"
    assert [frame["landmarks"] is not None for frame in cold["video"]["frames"]] == [True] * 12
    assert warm_documents == cold  # exactly: same floats, same JSON


@needs_pose
def test_a_graph_that_raised_is_discarded_and_built_again(tmp_path: Path, photo: Path) -> None:
    cold = landmarks_document(run(tmp_path / "cold", {"image": photo}, backend=PoseBackend()))
    backend = PoseBackend()
    backend.warm()
    graph = backend._graphs.image
    with pytest.raises(ValueError, match="three channel rgb"):
        graph.process(numpy.zeros((8, 8, 4), dtype=numpy.uint8))  # mediapipe refuses it
    assert graph._pose is None

    assert landmarks_document(run(tmp_path / "again", {"image": photo}, backend=backend)) == cold
    assert graph._pose is not None


@needs_pose
def test_each_thread_has_its_own_graphs(tmp_path: Path, photo: Path) -> None:
    backend = PoseBackend()
    here = landmarks_document(run(tmp_path / "here", {"image": photo}, backend=backend))
    graphs: list[object] = []
    documents: list[dict[str, Any]] = []

    def elsewhere() -> None:
        documents.append(landmarks_document(run(tmp_path / "there", {"image": photo}, backend=backend)))
        graphs.append(backend._graphs.image._pose)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(60)
    assert len(graphs) == 1
    assert graphs[0] is not backend._graphs.image._pose
    assert documents == [here]


@needs_pose
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm (Linux)")
def test_memory_stays_bounded_over_many_jobs(tmp_path: Path, photo: Path, frames: dict[str, Any]) -> None:
    png = write(tmp_path / "photo.png", encode(frames["person"], ".png"))
    clip = moving_clip(tmp_path / "walk.avi", frames["person"], (3, 0), count=4)
    inputs = [photo, png, photo, png, clip]
    backend = PoseBackend()
    backend.warm()

    def jobs(count: int) -> float:
        for index in range(count):
            run(tmp_path / "job", {"input": inputs[index % len(inputs)]}, backend=backend)
        return resident_mib()

    after_10, after_70 = jobs(10), jobs(60)
    print(f"pose: resident memory {after_10:.0f} MiB after 10 jobs, {after_70:.0f} MiB after 70")
    # A leak of a graph or a decoded photo per job would add several MiB a job; the allocator's own
    # swings stay within some tens of MiB.
    assert after_70 - after_10 < 128


# --- bad input fails the job, with the reason -------------------------------------------------------------


def test_no_input_or_two_inputs_fail(tmp_path: Path) -> None:
    with pytest.raises(JobFailed, match="exactly one input file, an image or a video; got none"):
        run(tmp_path, {})
    one = write(tmp_path / "a.png", b"x")
    with pytest.raises(JobFailed, match=r"exactly one input file.*got image, video"):
        run(tmp_path, {"image": one, "video": one})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"input 'image' is empty \(0 bytes\)"),
        (b"name,x,y\nnose,1,2\n", r"neither an image nor a video \(it starts with text\).*send a JPEG, PNG"),
        (b"\x00\x01\x02\x03" * 10, r"neither an image nor a video \(it starts with bytes 00 01 02 03"),
        (b"GIF89a" + b"\x00" * 20, r"is a GIF image, which cannot be read: send JPEG or PNG"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20, r"is a HEIC/AVIF image, which cannot be read"),
    ],
    ids=["empty", "text", "binary", "gif", "heic"],
)
def test_content_that_is_not_a_readable_image_or_video_fails(
    tmp_path: Path, content: bytes, message: str
) -> None:
    # Named .jpg on purpose: the extension decides nothing.
    with pytest.raises(JobFailed, match=message):
        run(tmp_path, {"image": write(tmp_path / "photo.jpg", content)})


@needs_pose
@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_a_truncated_image_fails(tmp_path: Path, frames: dict[str, Any], extension: str) -> None:
    data = encode(frames["person"], extension)
    truncated = write(tmp_path / f"photo{extension}", data[: len(data) // 2])
    with pytest.raises(JobFailed, match=r"cannot be decoded as a (JPEG|PNG) image: truncated or corrupt"):
        run(tmp_path, {"image": truncated})


@needs_pose
def test_a_corrupt_image_fails(tmp_path: Path, frames: dict[str, Any]) -> None:
    data = encode(frames["person"], ".jpg")
    corrupt = write(tmp_path / "photo.jpg", data[:20] + b"\x00" * (len(data) - 20))
    with pytest.raises(JobFailed, match="cannot be decoded as a JPEG image"):
        run(tmp_path, {"image": corrupt})


@needs_pose
def test_an_image_without_a_person_fails(tmp_path: Path, frames: dict[str, Any]) -> None:
    gray = write(tmp_path / "gray.png", encode(frames["gray"], ".png"))
    with pytest.raises(JobFailed, match=r"no person found in input 'image' \(1 frame examined\)"):
        run(tmp_path, {"image": gray})


@needs_pose
def test_a_video_without_a_person_fails(tmp_path: Path, frames: dict[str, Any]) -> None:
    video = write_video(tmp_path / "empty-room.avi", [frames["gray"]] * 3)
    with pytest.raises(JobFailed, match=r"no person found in input 'video' \(3 frames examined\)"):
        run(tmp_path, {"video": video})


@needs_pose
def test_a_truncated_video_fails(tmp_path: Path, frames: dict[str, Any]) -> None:
    data = write_video(tmp_path / "clip.avi", [frames["person"]] * 5).read_bytes()
    truncated = write(tmp_path / "cut.avi", data[: len(data) * 6 // 10])
    with pytest.raises(JobFailed, match=r"truncated or corrupt AVI video: \d of its 5 frames can be decoded"):
        run(tmp_path, {"video": truncated})


@needs_pose
def test_an_mp4_without_its_index_fails(tmp_path: Path, frames: dict[str, Any]) -> None:
    # mp4v writes the index (moov) last: cutting the file loses it.
    data = write_video(tmp_path / "clip.mp4", [frames["person"]] * 5, "mp4v").read_bytes()
    truncated = write(tmp_path / "cut.mp4", data[: len(data) // 2])
    with pytest.raises(JobFailed, match="cannot be opened as a MP4 video: truncated or corrupt"):
        run(tmp_path, {"video": truncated})


# --- limits -----------------------------------------------------------------------------------------------


def png_declaring(width: int, height: int, small_png: bytes) -> bytes:
    """A small PNG whose header claims another size: a decompression bomb's shape, without the bomb."""
    ihdr = bytearray(small_png[12:29])  # chunk type + 13 bytes of data
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return small_png[:12] + bytes(ihdr) + crc + small_png[33:]


@needs_pose
def test_an_image_declaring_too_many_pixels_fails_before_decoding(
    tmp_path: Path, frames: dict[str, Any]
) -> None:
    bomb = write(tmp_path / "bomb.png", png_declaring(60_000, 60_000, encode(frames["gray"][:8, :8], ".png")))
    with pytest.raises(JobFailed, match="input 'image' is too large: over"):
        run(tmp_path, {"image": bomb})


@needs_pose
def test_an_image_over_the_pixel_limit_fails(
    tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pose_module, "MAX_PIXELS", 512 * 600 - 1)
    with pytest.raises(JobFailed, match="too large: 512x600 pixels per frame, the limit is 307,199"):
        run(tmp_path, {"image": photo})


@needs_pose
def test_an_image_over_the_byte_limit_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pose_module, "MAX_IMAGE_BYTES", 100)
    big = write(tmp_path / "big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with pytest.raises(JobFailed, match="too large: 208 bytes, the limit for an image is 100"):
        run(tmp_path, {"image": big})


@needs_pose
def test_a_video_over_the_frame_limit_fails(
    tmp_path: Path, frames: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    video = write_video(tmp_path / "clip.avi", [frames["person"]] * 4)
    monkeypatch.setattr(pose_module, "MAX_FRAMES", 3)
    with pytest.raises(JobFailed, match="too long: 4 frames, the limit is 3"):
        run(tmp_path, {"video": video})


# --- without the extra ------------------------------------------------------------------------------------


def test_without_mediapipe_the_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # an import of it now raises ImportError
    reason = PoseBackend().unavailable()
    assert reason is not None
    assert reason.startswith(INSTALL_HINT)
    assert "han_worker[pose] (mediapipe==0.10.21)" in reason


def test_the_registry_loads_the_pose_backend_without_its_libraries() -> None:
    # A fresh interpreter in which mediapipe, OpenCV and numpy cannot be imported, as on a bare worker.
    script = (
        "import sys\n"
        "for name in ('mediapipe', 'cv2', 'numpy'): sys.modules[name] = None\n"
        "from han_worker.backends import backends_for_queues, get_backend\n"
        "backend = get_backend('pose')\n"
        "assert [b.name for b in backends_for_queues(['pose'], 'linux')['pose']] == ['pose']\n"
        "print(backend.unavailable())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("install han_worker[pose] (mediapipe==0.10.21)")
