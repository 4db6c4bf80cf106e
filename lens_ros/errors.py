"""Errors of the ROS 2 layer. All derive from `lens_model.errors.LensError`, so `lens` prints them as one line
and the node can log `str(exc)` and answer `success=false` with it.

    LensRosError(LensError)
    ├── ImageConversionError(LensRosError, ImageError)   a sensor_msgs/Image or CompressedImage we cannot read
    └── BagError(LensRosError)                           a rosbag2 we cannot read or write (lens bag)
"""

from lens_model.errors import ImageError, LensError


class LensRosError(LensError):
    """Base class of errors raised by `lens_ros` (bad messages, bags, parameters)."""


class ImageConversionError(LensRosError, ImageError):
    """An image message that cannot be turned into an array: unsupported encoding, inconsistent step,
    zero size, truncated data, corrupt compressed data."""


class BagError(LensRosError):
    """A rosbag2 that is missing, unreadable, lacks the requested topic, or an output that already exists."""
