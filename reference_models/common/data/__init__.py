"""Datasets: synthetic moving shapes, video folders and image folders."""

from .image_folder import IMAGE_EXTENSIONS, ImageFolder, SkippedFile, load_captions
from .moving_shapes import PALETTE, SHAPE_KINDS, MovingShapes, MovingShapesImages, ShapeSpec, render_shapes
from .video_folder import VIDEO_EXTENSIONS, VideoFolder, VideoTooShortError, nearest_frame_indices

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "SkippedFile",
    "load_captions",
    "PALETTE",
    "SHAPE_KINDS",
    "MovingShapes",
    "MovingShapesImages",
    "ShapeSpec",
    "render_shapes",
    "VIDEO_EXTENSIONS",
    "VideoFolder",
    "VideoTooShortError",
    "nearest_frame_indices",
]
