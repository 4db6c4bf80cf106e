"""lens_ros: LENS segmentation for robots through ROS 2.

Plain Python (no rclpy), tested without ROS: conversions (Image/CompressedImage <-> numpy), policy (command queue,
frame choice, staleness), results and interfaces (output messages), engine (what the node does, on a worker
thread), depth (depth images, their pairing with frames by stamp, the 3D target; the maths is
lens_model.geometry.target3d), whisper (spoken commands), streaming (reasoning as it is generated), params (the node's
parameters), bag (`lens bag`). The rclpy glue: node (`ros2 run lens_ros lens_node`).
"""
