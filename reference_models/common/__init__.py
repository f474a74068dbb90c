"""What every reference system shares: data, video IO, the training loop, checkpoints, Hub-style
save_pretrained / from_pretrained, distributed."""

from .checkpoint import latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from .data import ImageFolder, MovingShapes, MovingShapesImages, VideoFolder
from .distributed import DistInfo, cleanup, init_distributed, wrap_model
from .ema import EMA
from .logging import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .precision import autocast
from .pretrained import PretrainedError, PretrainedMixin, export_pretrained, load_pretrained
from .probe import ShapesProbe
from .trainer import NonFiniteLossError, TrainConfig, TrainState, check_data_dir, check_dataset, train
from .video_io import read_video, save_frame_grid, write_samples, write_video

__all__ = [
    "DistInfo",
    "EMA",
    "ImageFolder",
    "MetricsLogger",
    "MovingShapes",
    "MovingShapesImages",
    "NonFiniteLossError",
    "PretrainedError",
    "PretrainedMixin",
    "ShapesProbe",
    "TrainConfig",
    "TrainState",
    "VideoFolder",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "check_data_dir",
    "check_dataset",
    "cleanup",
    "export_pretrained",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "load_weights",
    "read_video",
    "save_checkpoint",
    "save_frame_grid",
    "train",
    "wrap_model",
    "write_samples",
    "write_video",
]
