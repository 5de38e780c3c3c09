"""DeepFM (Guo et al., IJCAI 2017): an FM and an MLP that share one embedding table."""
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import MLP, FeatureEmbedding, LinearTerm, fm_interaction


class DeepFM(nn.Module):
    """logit = y_FM + y_DNN   (eq. 1): low-order crosses from the FM, high-order ones from the MLP
    over the concatenated field embeddings; ``use_fm=False`` leaves a plain embedding + MLP."""

    def __init__(self, schema: Schema, embedding_dim: int = 10, hidden=(400, 400, 400), dropout: float = 0.0,
                 batch_norm: bool = False, use_fm: bool = True):
        super().__init__()
        self.schema, self.use_fm = schema, use_fm
        self.linear = LinearTerm(schema) if use_fm else None
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.mlp = MLP(self.embedding.num_fields * embedding_dim, hidden, 1, dropout, batch_norm=batch_norm)

    def forward(self, batch):
        e = self.embedding(batch)  # [B, F, D]
        logit = self.mlp(e.flatten(1)).squeeze(-1)  # [B]
        if self.use_fm:
            logit = logit + self.linear(batch) + fm_interaction(e)
        return logit
