"""The page of `lens demo`: one `DemoSession` (the model, loaded once) and the gradio Blocks around it.

`DemoSession.segment` and `DemoSession.track` are plain Python (no gradio): they run the same functions as
`lens segment` (pipeline, `result_files`) and `lens track` (`track_video`), answer bad input with the one-line
message those commands print, and hold a lock around the model, so that a request never runs beside another one
whichever way the page is served. gradio's queue runs the image and video requests in one line (one concurrency
group of size 1).
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no telemetry requests
import gradio as gr  # noqa: E402

from lens_model.errors import ImageError, LensError  # noqa: E402
from lens_model.inference.answer import answer_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_SCENE = REPO / "assets" / "demo-scene.png"
SAMPLE_PHOTO = REPO / "assets" / "sample.jpg"
# Expressions of the demo scene that the demo model gets right (its mask is the referred object of
# assets/demo-scene.json, IoU >= 0.5; checked by tests/test_demo_page.py): one per object and one relational.
DEMO_SCENE_PROMPTS = (
    "the green triangle",
    "the red triangle",
    "the yellow square",
    "the blue circle",
    "the shape below the red triangle",
)
SAMPLE_PHOTO_PROMPT = "the astronaut's helmet"
KEEP_REQUESTS = 32  # request folders kept on disk (the page serves copies from gradio's cache)
# Pieces of the answer that `answer_parts` labels, per answer format: grounding answers name the object and give box
# tokens; think_answer answers give the box in their <answer> block.
ANSWER_COLORS = {"grounding": {"phrase": "#4caf50", "box": "#ff9800"}, "think_answer": {"answer": "#2196f3"}}
# Small pictures (the demo scenes are 128 px) are shown enlarged, large ones shrunk to the same height.
CSS = """
#image-input img, #overlay img { width: 100%; height: 320px; object-fit: contain; }
.lens-error { color: var(--error-text-color); font-weight: 600; }
"""
MODEL_GROUP = "model"  # the concurrency group of every request that runs the model


@dataclass
class ImageAnswer:
    """What the image tab shows for one request."""

    status: str  # one line: what was done, or "error: ..." as `lens segment` prints it
    overlay: Path | None = None
    parts: list[tuple[str, str | None]] = field(default_factory=list)  # the model's answer, pieces labelled
    details: str = ""  # box, score, mask size, per-stage timings (Markdown)
    files: list[Path] = field(default_factory=list)  # mask PNG and JSON record


@dataclass
class VideoAnswer:
    """What the video tab shows for one request."""

    status: str
    video: Path | None = None
    files: list[Path] = field(default_factory=list)  # tracks.jsonl


def user_message(exc: LensError, path: str | None, name: str | None) -> str:
    """The error line of a command, with the server-side path of an upload replaced by the file's own name."""
    text = str(exc)
    return f"error: {text.replace(path, name or Path(path).name) if path else text}"


def status_html(status: str) -> str:
    """The status line as HTML (the text escaped: it quotes file names and commands), errors in the error colour."""
    kind = "lens-error" if status.startswith("error:") else "lens-done"
    return f'<p class="{kind}">{html.escape(status)}</p>'


def timings_line(timings: dict[str, float]) -> str:
    """Per-stage timings on one Markdown line, in milliseconds, the total last in bold."""
    stages = " · ".join(f"{stage} {seconds * 1000:.1f}" for stage, seconds in timings.items() if stage != "total")
    return f"**timings (ms)** {stages} · **total {timings.get('total', 0.0) * 1000:.1f}**"


def result_details(result) -> str:
    """Box, score and mask of a SegmentationResult, whether it is confident (and why not), and its per-stage
    timings, as Markdown."""
    h, w = result.image_size
    box = (
        "[" + ", ".join(f"{v:.1f}" for v in result.box) + "] px (x0, y0, x1, y1, from the answer)"
        if result.box is not None
        else f"none ({result.box_error})"
    )
    confident = "yes" if result.confident else f"no — {result.reason} (the object is probably not in the image)"
    return (
        f"**confident** {confident}  \n"
        f"**box** {box}  \n**score** {result.score:.3f} (SAM2's predicted IoU)  \n"
        f"**mask** {int(result.mask.sum())} of {w}×{h} pixels · answer format "
        f"{'followed' if result.format_ok else 'not followed'}  \n{timings_line(result.timings)}"
    )


def write_example_clip(path: Path, frames: int = 24, step: int = 2) -> Path:
    """A short clip of the demo scene panning right and down (`step` px per frame), for the video tab's example."""
    from lens_model.image_io import load_image
    from lens_model.tracking.video_io import VideoWriter

    scene = load_image(DEMO_SCENE)
    reach = step * (frames - 1)
    padded = np.pad(scene, ((reach, 0), (reach, 0), (0, 0)), mode="edge")
    h, w = scene.shape[:2]
    with VideoWriter(path, fps=8) as writer:
        for i in range(frames):
            top = left = reach - step * i  # the window moves up-left: the scene moves right-down
            writer.write(padded[top : top + h, left : left + w])
    return path


class DemoSession:
    """The loaded model of a `lens demo` process and the folder its answers are written to."""

    def __init__(
        self,
        pipe,
        model_name: str,
        backend: str,
        memory=None,
        tracking_off: str | None = None,
        max_video_frames: int = 600,
    ) -> None:
        self.pipe, self.model_name, self.backend = pipe, model_name, backend
        self.memory = memory  # SamMemory (torch) or None (an export's memory graphs, or no tracking)
        self.tracking_off = tracking_off  # why the video tab cannot track, or None
        self.max_video_frames = max_video_frames
        self.workdir = Path(tempfile.mkdtemp(prefix="lens-demo-"))
        self._lock = threading.Lock()
        self._requests = 0

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "torch",
        backend_dir: str | None = None,
        max_new_tokens: int = 256,
        sam_memory_checkpoint: Path | None = None,
        max_video_frames: int = 600,
        model_name: str | None = None,
    ) -> DemoSession:
        """Load the model (once). Tracking memory as `lens track` finds it; when there is none the video tab says
        why, unless `sam_memory_checkpoint` was given: then its error is the command's."""
        from lens_model.inference.backends import check_backend_args
        from lens_model.inference.pipeline import LensPipeline
        from lens_model.model.checkpoint import resolve_model_dir
        from lens_model.tracking.track_video import tracking_memory

        choice = check_backend_args(backend, backend_dir)
        model_dir = resolve_model_dir(model)
        memory, tracking_off = None, None
        try:
            memory = tracking_memory(model_dir, choice, sam_memory_checkpoint)
        except LensError as exc:
            if sam_memory_checkpoint is not None:
                raise
            tracking_off = str(exc)
        pipe = LensPipeline.from_pretrained(
            str(model_dir),
            device=device,
            dtype=dtype,
            backend=backend,
            backend_dir=backend_dir,
            max_new_tokens=max_new_tokens,
        )
        return cls(pipe, model_name or str(model), backend, memory, tracking_off, max_video_frames)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _request_folder(self) -> Path:
        """A new folder for one request's files; the oldest beyond KEEP_REQUESTS are removed."""
        self._requests += 1
        folder = self.workdir / f"{self._requests:06d}"
        folder.mkdir()
        for old in sorted(self.workdir.iterdir())[:-KEEP_REQUESTS]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def segment(self, image: str | None, name: str | None, prompt: str | None) -> ImageAnswer:
        """`lens segment --image IMAGE --prompt PROMPT --out-mask --out-overlay --json` on the loaded model. `name`:
        the image's name for messages and the JSON (an upload's own name; default: the file name of `image`)."""
        from lens_model.image_io import load_image, read_prompt
        from lens_model.inference.prompting import check_mllm_image_size
        from lens_model.inference.result_files import save_mask_png, save_overlay, segment_record, write_record

        try:
            if not image:
                raise ImageError("no image: upload one or pick an example")
            name = name or Path(image).name
            rgb = load_image(image)
            check_mllm_image_size(rgb.shape[:2], name)
            prompt = read_prompt(prompt)
            with self._lock:
                result = self.pipe(rgb, prompt)
                folder = self._request_folder()
            stem = Path(name).stem
            mask, overlay, record = folder / f"{stem}-mask.png", folder / f"{stem}-overlay.png", folder / f"{stem}.json"
            save_mask_png(result.mask, mask)
            save_overlay(rgb, result, overlay)
            write_record(
                segment_record(result, name, self.model_name, self.backend, None, mask.name, overlay.name), record
            )
        except LensError as exc:
            return ImageAnswer(user_message(exc, image, name))
        status = f"segmented “{result.prompt}” in {name} ({result.timings['total']:.2f} s)"
        return ImageAnswer(status, overlay, answer_parts(result.text), result_details(result), [mask, record])

    def track(
        self, video: str | None, name: str | None, prompt: str | None, reason_every: float | None = None
    ) -> VideoAnswer:
        """`lens track --video VIDEO --prompt PROMPT [--reason-every K]` on the loaded model (`name` as for
        `segment`)."""
        from lens_model.image_io import read_prompt
        from lens_model.tracking.track_video import track_video
        from lens_model.tracking.tracker import StreamingTracker
        from lens_model.tracking.video_io import VideoError, open_video

        try:
            if self.tracking_off is not None:
                raise LensError(self.tracking_off)
            if not video:
                raise VideoError("no clip: upload a video or pick the example")
            prompt = read_prompt(prompt)
            every = int(reason_every) if reason_every else None
            if every is not None and every < 1:
                raise LensError(f"ask LENS again every K frames: K must be >= 1 (0: first frame only), got {every}")
            source = open_video(video)
            if source.num_frames is not None and source.num_frames > self.max_video_frames:
                raise VideoError(
                    f"{video} has {source.num_frames} frames; this demo takes clips of at most {self.max_video_frames} "
                    "(lens demo --max-video-frames, or lens track for long videos)"
                )
            with self._lock:
                folder = self._request_folder()
                memory = self.memory if self.memory is not None else self.pipe.backend
                tracker = StreamingTracker.from_lens_model(self.pipe.model, memory, num_frames=source.num_frames)
                summary = track_video(self.pipe, tracker, source, prompt, folder, reason_every=every)
        except LensError as exc:
            return VideoAnswer(user_message(exc, video, name))
        status = (
            f"tracked “{prompt}” in {name or Path(video).name}: {summary.frames} frames, {summary.lens_queries} LENS "
            f"queries, {summary.lost_frames} frames lost"
        )
        return VideoAnswer(status, folder / "overlay.mp4", [folder / "tracks.jsonl"])


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _upload(payload: dict | None) -> tuple[str | None, str | None]:
    """(server-side path, the file's own name) of an uploaded file as gradio passes it unprocessed (FileData)."""
    if not payload or not payload.get("path"):
        return None, None
    return payload["path"], payload.get("orig_name") or Path(payload["path"]).name


def build_app(session: DemoSession) -> gr.Blocks:
    """The page: an image tab and a video tab around `session`."""
    with gr.Blocks(title="LENS demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"## LENS: text-prompted segmentation\nModel **{session.model_name}** on {session.pipe.model.device} "
            f"({session.backend} backend). Upload an image, type a command, press Segment."
        )
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(
                        type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image-input"
                    )
                    prompt = gr.Textbox(label="Command", placeholder="the green triangle", elem_id="image-prompt")
                    run = gr.Button("Segment", variant="primary", elem_id="segment-button")
                    gr.Examples(
                        [[str(DEMO_SCENE), p] for p in DEMO_SCENE_PROMPTS] + [[str(SAMPLE_PHOTO), SAMPLE_PHOTO_PROMPT]],
                        inputs=[image, prompt],
                        label="Examples (the bundled demo model knows only scenes of coloured shapes like the first)",
                    )
                with gr.Column():
                    status = gr.HTML(elem_id="image-status")
                    overlay = gr.Image(type="filepath", label="Overlay", interactive=False, elem_id="overlay")
                    answer = gr.HighlightedText(
                        label="Model's answer",
                        color_map=ANSWER_COLORS[session.pipe.config.prompt.answer_format],
                        show_legend=True,
                        elem_id="answer",
                    )
                    details = gr.Markdown(elem_id="details")
                    files = gr.File(label="Mask PNG and JSON", file_count="multiple", elem_id="downloads")

        # preprocess=False: the handlers get the uploads' paths undecoded (gradio has checked that they are its own
        # uploads), so lens's loaders read them and name what is wrong with a bad file, as the commands do.
        def on_segment(image_file, text):
            out = session.segment(*_upload(image_file), text)
            return (
                status_html(out.status),
                _path(out.overlay),
                out.parts or None,
                out.details,
                [str(f) for f in out.files] or None,
            )

        gr.on(
            [run.click, prompt.submit],
            on_segment,
            [image, prompt],
            [status, overlay, answer, details, files],
            concurrency_id=MODEL_GROUP,
            concurrency_limit=1,
            api_name="segment",
            preprocess=False,
        )

        with gr.Tab("Video"):
            if session.tracking_off is not None:
                gr.Markdown(f"Tracking is off for this model: {session.tracking_off}", elem_id="video-off")
            else:
                gr.Markdown(
                    "LENS reasons about the command on the first frame; SAM2's memory follows the object from there "
                    "(as `lens track` does)."
                )
            with gr.Row():
                with gr.Column():
                    clip = gr.Video(sources=["upload"], label="Clip", height=320, elem_id="video-input")
                    video_prompt = gr.Textbox(label="Command", placeholder="the green triangle", elem_id="video-prompt")
                    reason_every = gr.Number(
                        value=0,
                        label="Ask LENS again every K frames (0: on the first frame, and when the target is lost)",
                        precision=0,
                        minimum=0,
                    )
                    track = gr.Button(
                        "Track", variant="primary", interactive=session.tracking_off is None, elem_id="track-button"
                    )
                    clip_example = write_example_clip(session.workdir / "demo-scene-pan.mp4")
                    gr.Examples([[str(clip_example), DEMO_SCENE_PROMPTS[0]]], inputs=[clip, video_prompt])
                with gr.Column():
                    video_status = gr.HTML(elem_id="video-status")
                    tracked = gr.Video(label="Tracked overlay", interactive=False, height=320, elem_id="tracked")
                    video_files = gr.File(label="tracks.jsonl", file_count="multiple", elem_id="video-downloads")

        def on_track(video_file, text, every, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (gradio's way)
            out = session.track(*_upload(video_file), text, every)
            return status_html(out.status), _path(out.video), [str(f) for f in out.files] or None

        track.click(
            on_track,
            [clip, video_prompt, reason_every],
            [video_status, tracked, video_files],
            concurrency_id=MODEL_GROUP,
            concurrency_limit=1,
            show_progress_on=tracked,
            api_name="track",
            preprocess=False,
        )
    return app


def launch(session: DemoSession, host: str, port: int, block: bool = True) -> gr.Blocks:
    """Serve the page on HOST:PORT with one queue for the model; `block`: until Ctrl+C."""
    app = build_app(session)
    app.queue()
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    print(f"lens demo: {session.model_name} on http://{host}:{port} (Ctrl+C to stop)", flush=True)
    app.launch(
        server_name=host,
        server_port=port,
        ssr_mode=False,
        quiet=True,
        theme=theme,
        css=CSS,
        prevent_thread_lock=not block,
    )
    return app
