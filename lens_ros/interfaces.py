"""The lens_interfaces message, service and action definitions as .msg texts, for a rosbags typestore (lens bag and
the tests read and write lens_interfaces messages without ROS). The messages themselves are built by
lens_ros.messages.
"""

from __future__ import annotations

from pathlib import Path

# lens_interfaces/ next to lens_ros/ in the source tree (not installed by pip: colcon builds it)
INTERFACES_DIR = Path(__file__).resolve().parents[1] / "lens_interfaces"


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
