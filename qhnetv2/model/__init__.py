"""The QHNetV2 model (docs/model.md)."""
from .config import PRESETS, ModelConfig, preset
from .qhnetv2 import ModelInputs, QHNetV2, layout_from_basis, load_checkpoint, save_atomic

__all__ = ["ModelConfig", "ModelInputs", "PRESETS", "QHNetV2", "layout_from_basis", "load_checkpoint", "preset", "save_atomic"]
