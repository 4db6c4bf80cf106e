"""Geometry: a mask + a registered depth image + the camera -> the object's 3D target."""
