"""Training: the one loop every method uses (:mod:`s3kit.train.trainer`) and the teacher-feature cache."""

from s3kit.train.trainer import TrainConfig, TrainResult, last_checkpoint, lr_factor, setup_distributed, teardown_distributed, train, validate

__all__ = ["TrainConfig", "TrainResult", "last_checkpoint", "lr_factor", "setup_distributed", "teardown_distributed", "train", "validate"]
