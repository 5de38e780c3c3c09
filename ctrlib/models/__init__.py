"""One file per model family. Every model follows one contract.

Constructor: ``Model(schema, embedding_dim, hidden, ...)``
    ``schema`` (a :class:`ctrlib.data.Schema`) first: the model reads every input through it and
    sizes its embedding tables from it. Then ``embedding_dim`` (the width of an id's embedding) and
    ``hidden`` (the widths of the model's main MLP), in that order, for the models that have them:
    ``LogisticRegression(schema)`` has neither, ``FM(schema, embedding_dim)`` no MLP. Everything
    after those is the model's own option, with a default (``DCN(..., cross_layers=3)``), except
    what the schema cannot say (``TwoTower(..., item_features=[...])``, keyword-only).
    Wrappers take the model they compose first: ``APG(DeepFM(schema, ...), ...)``.

Forward: ``model(batch) -> logits``
    ``batch`` is a dict of tensors with (at least) the schema's columns. The result is ``[B]``
    logits for the schema's label; ``[B, N]`` for a sequence ranker that scores every event of a
    sequence (the generative rankers, :class:`GenerativeRanker`: one logit per event, see
    ``TrainConfig.loss_mask``); or a dict ``{label: [B] logits, ..., "aux_loss": scalar}`` for
    several tasks or an extra loss (DIEN's auxiliary loss in training).

Parameters: every embedding table is a :class:`ctrlib.layers.FeatureEmbedding` or a
:class:`ctrlib.layers.EmbeddingTable` (never a bare ``nn.Embedding``), so :func:`ctrlib.train.fit`
gives every table ``embedding_l2`` and no weight decay, and every other parameter weight decay.

Pre-training models (``PRETRAINING``): self-supervised stage-1 models with no label, such as
:class:`ContrastiveID`, which ``fit`` trains on its own ``aux_loss`` (``self_supervised = True``).

Layers, not models (they take widths, not a schema): :class:`APGLinear` and :class:`APGMLP`
(APG's generated layers), :class:`HSTUBlock` (the block the generative rankers stack) and
:class:`DHENLayer` (one layer of DHEN's hierarchical ensemble); they
live in their model's file because only that model family uses them.
"""
from ctrlib.models.apg import APG, APGLinear, APGMLP, ConditionInMLP
from ctrlib.models.contrastive_id import ContrastiveID
from ctrlib.models.dcn import DCN
from ctrlib.models.deepfm import DeepFM
from ctrlib.models.dfgr import GenerativeRanker
from ctrlib.models.dhen import DHEN, DHENLayer
from ctrlib.models.dien import DIEN
from ctrlib.models.diff_msin import DiffMSIN
from ctrlib.models.din import DIN
from ctrlib.models.dlrm import DLRM
from ctrlib.models.fm import FM
from ctrlib.models.hstu import HSTUBlock
from ctrlib.models.lr import LogisticRegression
from ctrlib.models.mmoe import MMoE
from ctrlib.models.ple import PLE
from ctrlib.models.tarq import TARQ
from ctrlib.models.tlsi import TLSI
from ctrlib.models.two_tower import TwoTower

MODELS = ("LogisticRegression", "FM", "DeepFM", "DCN", "DLRM", "APG", "ConditionInMLP", "TwoTower", "DIN", "DIEN",
          "GenerativeRanker", "TLSI", "DHEN", "MMoE", "PLE", "DiffMSIN", "TARQ")
LAYERS = ("APGLinear", "APGMLP", "HSTUBlock", "DHENLayer")
PRETRAINING = ("ContrastiveID",)  # self-supervised stage-1 models: no label, trained on id pairs
__all__ = [*MODELS, *LAYERS, *PRETRAINING]
