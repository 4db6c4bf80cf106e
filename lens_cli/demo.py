"""`lens demo`: an interactive web page (gradio) around one loaded model: an image and a command in, the overlay, the
model's answer, box, score, timings and the files of `lens segment` out; a video tab runs `lens track`'s code.

Building the parser imports no gradio; the page itself is `lens_cli.demo_app`. Needs the [demo] extra.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from pathlib import Path

from lens_model.errors import LensError

from .options import add_backend_arguments, add_device_dtype_arguments

# The trained demo model of this repository: the page works offline with no download.
DEFAULT_DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo-model"
DEFAULT_PORT = 7860  # gradio's


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="serve an interactive web page: upload an image or a clip, type a command, see the result",
        description="Loads the model once and serves a gradio page on http://HOST:PORT: an image tab (overlay, the "
        "model's answer with the phrase and box highlighted, box, score, per-stage timings, the mask PNG and the "
        "JSON of `lens segment --json`) and a video tab (the tracked overlay video of `lens track`). Requests "
        "are queued and run one at a time on the one model. Needs gradio: pip install -e '.[demo]'.",
    )
    p.add_argument(
        "--model",
        default=str(DEFAULT_DEMO_MODEL),
        help="checkpoint directory or Hub id (default: assets/demo-model, the bundled tiny model trained on "
        "coloured shapes; OuyBin/LENS for the released weights)",
    )
    add_device_dtype_arguments(p)
    add_backend_arguments(
        p,
        "what runs SAM2 + the context head: torch (default), or the graphs/engines of a `lens export` directory",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the MLLM (default: 256)")
    p.add_argument(
        "--sam-memory-checkpoint",
        type=Path,
        help="SAM2 memory weights for the video tab (default: sam2_memory.safetensors in the model directory; "
        "without them the video tab is off)",
    )
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=600,
        help="longest clip the video tab accepts, in frames (default: 600)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens the page to the network)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """LensError unless HOST:PORT can be listened on, before the model loads."""
    if not 0 < port < 65536:
        raise LensError(f"--port must be in 1..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LensError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            raise LensError(f"cannot listen on {host}:{port} ({exc.strerror}); pass a free port with --port") from None


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise LensError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.max_video_frames < 1:
        raise LensError(f"--max-video-frames must be >= 1, got {args.max_video_frames}")
    check_port_free(args.host, args.port)
    if not is_loopback(args.host):
        print(
            f"lens demo: warning: --host {args.host}: the page is reachable by anyone on the network who can reach "
            f"port {args.port} of this machine (no login: every visitor can run the model)",
            file=sys.stderr,
        )
    try:
        from .demo_app import DemoSession, launch
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "gradio":
            raise
        raise LensError("lens demo needs gradio: pip install -e '.[demo]'") from None
    session = DemoSession.load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        backend_dir=args.backend_dir,
        max_new_tokens=args.max_new_tokens,
        sam_memory_checkpoint=args.sam_memory_checkpoint,
        max_video_frames=args.max_video_frames,
        model_name="assets/demo-model" if args.model == str(DEFAULT_DEMO_MODEL) else args.model,
    )
    # SIGTERM (a service manager, `kill`) stops the page like Ctrl+C does: through the `finally` below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        launch(session, args.host, args.port)
    finally:
        session.close()
    return 0
