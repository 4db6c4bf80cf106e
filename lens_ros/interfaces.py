"""lens_interfaces messages from a SegmentationResult (plain Python, no rclpy).

    fill_segmentation_result(result, header, messages, types=None, target=None, error_3d="")
        -> lens_interfaces/msg/SegmentationResult

`messages` are the topic messages lens_ros.results.fill_result built for the same result (the mask and the
detection are reused, not rebuilt); with a 3D target (lens_model.geometry.target3d.Target3D), `messages.target`
holds its messages (lens_ros.results.fill_target) and `error_3d` says why it is missing or not ok. `types` as in
lens_ros.conversions: rosbags' `typestore.types` (with the lens_interfaces and vision_msgs definitions registered,
see `lens_interfaces_definitions`) or None to import the classes from the ROS 2 Python packages, as the node does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lens_model.geometry.target3d import Target3D

from .conversions import message_class
from .results import DetectionArrayFields, DetectionFields, ResultMessages, fill_detection_3d, fill_detections

RESULT_TYPE = "lens_interfaces/msg/SegmentationResult"
# lens_interfaces/ next to lens_ros/ in the source tree (not installed by pip: colcon builds it)
INTERFACES_DIR = Path(__file__).resolve().parents[1] / "lens_interfaces"


def _float32_array(cls: type, values) -> Any:
    return np.asarray(values, dtype=np.float32) if dataclasses.is_dataclass(cls) else [float(v) for v in values]


def fill_segmentation_result(
    result,
    header: Any,
    messages: ResultMessages,
    types: Mapping[str, type] | None = None,
    target: Target3D | None = None,
    error_3d: str = "",
) -> Any:
    """One SegmentationResult message: the source `header`, the prompt, the mono8 mask from `messages`, the
    detection (bbox all zero and has_box false when the answer had no box), score, reasoning and timings; the 3D
    target (has_3d false, detection_3d all zero and `error_3d` when there is none or it is not ok)."""
    cls = message_class(RESULT_TYPE, types)
    if messages.detections.detections:
        detection = messages.detections.detections[0]
    else:  # keep the hypothesis (prompt, mask score) so that consumers can read them the same way
        empty = DetectionArrayFields(
            header,
            [
                DetectionFields(
                    header=header,
                    class_id=result.prompt,
                    score=float(result.score),
                    center_x=0.0,
                    center_y=0.0,
                    size_x=0.0,
                    size_y=0.0,
                )
            ],
        )
        detection = fill_detections(empty, types).detections[0]
    names = list(result.timings)
    measured = target if target is not None else Target3D(False, error_3d)
    header_3d = messages.target.header if messages.target is not None else header
    return cls(
        header=header,
        prompt=str(result.prompt),
        mask=messages.mask,
        has_box=result.box is not None,
        detection=detection,
        box_error=str(result.box_error or ""),
        score=float(result.score),
        reasoning=str(result.text),
        format_ok=bool(result.format_ok),
        num_tokens=int(result.num_tokens),
        timing_names=names,
        timing_seconds=_float32_array(cls, [result.timings[n] for n in names]),
        has_3d=bool(measured.ok),
        error_3d=str(error_3d if not measured.ok else ""),
        detection_3d=fill_detection_3d(measured, header_3d, result.prompt, float(result.score), types),
        num_points_3d=int(measured.num_points),
        valid_depth_fraction=float(measured.valid_fraction),
    )


def lens_interfaces_definitions(interfaces_dir: Path = INTERFACES_DIR) -> dict[str, str]:
    """Full type name -> .msg text for every lens_interfaces message, including the request/response of each
    service and the goal/result/feedback of each action (as rosidl names them: Segment_Request, Segment_Goal ...),
    for registering in a rosbags typestore. Field types of the package's own messages are made absolute."""
    own = {p.stem for p in (interfaces_dir / "msg").glob("*.msg")}

    def qualify(text: str) -> str:
        lines = []
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if parts and parts[0].split("[")[0] in own:
                line = "lens_interfaces/" + line.lstrip()
            lines.append(line)
        return "\n".join(lines) + "\n"

    defs = {
        f"lens_interfaces/msg/{p.stem}": qualify(p.read_text()) for p in sorted((interfaces_dir / "msg").glob("*.msg"))
    }
    for kind, parts in (("srv", ("Request", "Response")), ("action", ("Goal", "Result", "Feedback"))):
        for path in sorted((interfaces_dir / kind).glob(f"*.{kind}")):
            sections = _split_sections(path.read_text())
            if len(sections) != len(parts):
                raise ValueError(f"{path}: expected {len(parts)} sections separated by ---, found {len(sections)}")
            for part, section in zip(parts, sections):
                defs[f"lens_interfaces/{kind}/{path.stem}_{part}"] = qualify(section)
    return defs


def _split_sections(text: str) -> list[str]:
    sections, current = [], []
    for line in text.splitlines():
        if line.strip() == "---":
            sections.append("\n".join(current))
            current = []
        else:
            current.append(line)
    sections.append("\n".join(current))
    return sections
