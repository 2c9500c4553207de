"""Training the emotion models (``exe-stream train``).

- ``config``: ``TrainConfig``, the recipe's ``[train]`` table;
- ``data``: crops from ``DATA/clean.arrow`` or an image folder, the deterministic split,
  augmentation levels, class weights and resampling;
- ``network``: architectures, starting weights (imagenet / none / safetensors), trainable blocks;
- ``loop``: ``train(config, data, out_dir) -> RunRecord``, resumable, writing a model card;
- ``grid``: ``run_grid`` trains a list of variants and writes a results table;
- ``autoencoder``: convolutional autoencoder pretraining for the semi-supervised study;
- ``harvest``: a scan's faces cut again as unlabelled crops (``exe-stream data harvest``).
"""

from __future__ import annotations

from .config import AutoencoderConfig, TrainConfig, TrainError, config_from_table, load_train_config
from .data import TrainData, load_data, split_samples
from .grid import Grid, GridResult, load_grid, run_grid
from .loop import EpochMetrics, RunRecord, train

__all__ = [
    "AutoencoderConfig", "EpochMetrics", "Grid", "GridResult", "RunRecord", "TrainConfig", "TrainData",
    "TrainError", "config_from_table", "load_data", "load_grid", "load_train_config", "run_grid",
    "split_samples", "train",
]
