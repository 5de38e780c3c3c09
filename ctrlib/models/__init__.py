"""One file per model family. Every model takes a schema, reads a dict batch, returns logits ``[B]``.

Sequence rankers (:class:`GenerativeRanker`: ``GenerativeRanker(schema, embedding_dim, hidden, ...)``) read
``[B, N]`` sequences through the schema and return ``[B, N]`` logits, one per event.
"""
from ctrlib.models.apg import APG, APGLinear, APGMLP
from ctrlib.models.dcn import DCN
from ctrlib.models.deepfm import DeepFM
from ctrlib.models.dfgr import GenerativeRanker
from ctrlib.models.dien import DIEN
from ctrlib.models.din import DIN
from ctrlib.models.dlrm import DLRM
from ctrlib.models.fm import FM
from ctrlib.models.hstu import HSTUBlock
from ctrlib.models.lr import LogisticRegression
from ctrlib.models.tlsi import TLSI
from ctrlib.models.two_tower import TwoTower

__all__ = ["LogisticRegression", "FM", "DeepFM", "DCN", "DLRM", "APG", "APGLinear", "APGMLP", "TwoTower", "DIN", "DIEN",
           "HSTUBlock", "GenerativeRanker", "TLSI"]
