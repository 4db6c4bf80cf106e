"""Video in and out for `lens track`: frames from a video file (PyAV) or a folder of images; an H.264 MP4 writer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import LensError
from ..image_io import load_image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 30.0


class VideoError(LensError):
    """A video file or frame folder that cannot be read, or a video that cannot be written."""


def _natural_key(path: Path) -> list:
    """frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


@dataclass
class VideoSource:
    """Frames of a video file or an image folder, in order, as HxWx3 uint8 RGB."""

    path: Path
    num_frames: int | None  # None when the container does not say
    fps: float
    _files: list[Path] | None = None  # the frames of a folder

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._files is not None:
            for f in self._files:
                yield load_image(f)
            return
        import av

        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode video {self.path}: {exc}") from None


def open_video(path: str | Path, folder_fps: float = DEFAULT_FOLDER_FPS) -> VideoSource:
    """A video file (anything FFmpeg decodes: MP4, MKV, AVI, ...) or a folder of frame images (natural order).
    The file is probed here: a file that is not a decodable video fails with one VideoError line."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        files = sorted((f for f in path.iterdir() if f.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        if not files:
            raise VideoError(f"folder {path} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        return VideoSource(path, len(files), folder_fps, files)
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            stream = container.streams.video[0]
            next(container.decode(stream))  # the first frame must decode, or the file is not a usable video
            fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS)
            frames = int(stream.frames) or None
    except av.FFmpegError as exc:
        raise VideoError(f"cannot decode video {path}: {exc}") from None
    except StopIteration:
        raise VideoError(f"video {path} has no frames") from None
    return VideoSource(path, frames, fps)


class VideoWriter:
    """H.264 MP4 (yuv420p, so that common players open it) of RGB frames; frame size fixed by the first frame
    (odd sides are padded by one pixel, as yuv420p needs even sides)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        import av

        self.path = Path(path)
        try:
            self._container = av.open(str(self.path), mode="w")
        except av.FFmpegError as exc:
            raise VideoError(f"cannot write video {self.path}: {exc}") from None
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        if self._size is None:
            h, w = rgb.shape[:2]
            self._size = (h + h % 2, w + w % 2)
            self._stream.height, self._stream.width = self._size
        if rgb.shape[:2] != self._size:
            padded = np.zeros((*self._size, 3), np.uint8)
            h, w = min(rgb.shape[0], self._size[0]), min(rgb.shape[1], self._size[1])
            padded[:h, :w] = rgb[:h, :w]
            rgb = padded
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_frames(path: str | Path) -> int:
    """Frames a video file decodes to (reads it all)."""
    return sum(1 for _ in open_video(path))
