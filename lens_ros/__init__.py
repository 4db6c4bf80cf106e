"""lens_ros: the ROS 2 node that serves LENS segmentation to a robot (built in the ROS 2 issue)."""
