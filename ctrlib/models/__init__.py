"""One file per model family. Every model takes a schema, reads a dict batch, returns logits ``[B]``."""
from ctrlib.models.dcn import DCN
from ctrlib.models.deepfm import DeepFM
from ctrlib.models.dlrm import DLRM
from ctrlib.models.fm import FM
from ctrlib.models.lr import LogisticRegression

__all__ = ["LogisticRegression", "FM", "DeepFM", "DCN", "DLRM"]
