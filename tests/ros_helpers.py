"""Shared by the lens_ros tests: rosbags message classes (vision_msgs and lens_interfaces registered), so that
the node's messages are built and serialised as real ROS 2 messages without a ROS installation."""
import numpy as np


def lens_test_typestore():
    """A rosbags Humble typestore with vision_msgs and every lens_interfaces type; `store.lens_names` maps the
    rosidl name of each service/action part ("lens_interfaces/srv/Segment_Request") to its rosbags name."""
    from rosbags.typesys import get_types_from_msg

    from lens_ros.bag import lens_typestore
    from lens_ros.interfaces import lens_interfaces_definitions

    store = lens_typestore()
    types, store.lens_names = {}, {}
    for name, text in lens_interfaces_definitions().items():
        found = get_types_from_msg(text, name)
        # rosbags files service/action parts under a msg/ level ("lens_interfaces/srv/msg/Segment_Request")
        store.lens_names[name] = next(key for key in found if key.endswith(name.rsplit("/", 1)[1]))
        types.update(found)
    store.register(types)
    return store


def header(store, sec=100, nanosec=0, frame="camera_optical"):
    t = store.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame)


def cdr(store, msg, typename):
    """Serialise and deserialise through CDR, as a bag or a DDS wire would carry the message."""
    return store.deserialize_cdr(bytes(store.serialize_cdr(msg, typename)), typename)


def image_msg(store, rgb: np.ndarray, sec=100, nanosec=0, frame="camera_optical", encoding="rgb8"):
    from lens_ros.conversions import array_to_image

    return array_to_image(rgb, encoding, header(store, sec, nanosec, frame), store.types)
