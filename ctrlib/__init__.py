"""ctrlib: the small PyTorch library behind "Click-through rate prediction, paper by paper".

The pieces a chapter uses:

- ``ctrlib.data``: feature schema, vocabularies, tensor batches, the simulated CTR world, your own
  data in one call (``from_frames`` / ``from_files``) and the BARS benchmark splits (``data.bars``);
- ``ctrlib.layers``: shared building blocks (embeddings, MLP, FM, cross networks, ...);
- ``ctrlib.models``: one file per model family, each ``model(batch) -> logits``;
- ``ctrlib.train``: ``fit`` / ``evaluate`` / ``predict`` with early stopping, on any device;
- ``ctrlib.presets``: named training presets (``preset("bars")``) and BARS config keys;
- ``ctrlib.metrics``: AUC, GAUC, logloss, calibration and the oracle;
- ``ctrlib.plotting`` and ``ctrlib.book``: the book's figure style and notebook helpers;
- ``ctrlib.checks``: the argument and data checks behind every "bad input" error;
- ``ctrlib.serving`` / ``ctrlib.exporter``: ``save`` / ``load`` a model with its encoding, ``export`` it
  (ONNX, ``torch.export``); ``ctrlib.distributed``: the same ``fit`` under ``torchrun``.
"""
from ctrlib.train import TrainConfig, evaluate, fit, predict, seed_everything
from ctrlib.serving import Bundle, load, save
from ctrlib.exporter import export, export_towers, load_exported

__version__ = "0.1.0"
__all__ = ["TrainConfig", "fit", "evaluate", "predict", "seed_everything", "__version__"]
__all__ += ["save", "load", "Bundle", "export", "export_towers", "load_exported"]
