"""lens_ros: LENS segmentation for robots through ROS 2.

Plain Python (no rclpy), tested without ROS. Data in: conversions (Image/CompressedImage, PointCloud2 and stamps ->
numpy), depth (depth images, their pairing with frames by stamp, the 3D target; the maths is
lens_model.geometry.target3d), whisper (spoken commands). The work: policy (command queue, frame choice, staleness),
engine (what the node does, on a worker thread), tracking_worker (SAM2 memory between LENS queries), streaming
(reasoning as it is generated), params (the node's parameters). Data out, one way: fields (a result -> the fields of
the output messages, 2D, 3D and images) -> messages (the messages themselves; interfaces holds the lens_interfaces
definitions for rosbags). bag: `lens bag`. The rclpy glue: node and lifecycle (`ros2 run lens_ros lens_node`).
"""
