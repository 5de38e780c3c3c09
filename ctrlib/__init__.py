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
- ``ctrlib.checks``: the argument and data checks behind every "bad input" error.
"""
from ctrlib.train import TrainConfig, evaluate, fit, predict, seed_everything

__version__ = "0.1.0"
__all__ = ["TrainConfig", "fit", "evaluate", "predict", "seed_everything", "__version__"]
