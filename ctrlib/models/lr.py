"""Logistic regression: one weight per feature value, no interactions (the first CTR baseline)."""
from torch import nn

from ctrlib.data.schema import Schema
from ctrlib.layers import LinearTerm


class LogisticRegression(nn.Module):
    """logit = b + sum_f w_{x_f}"""

    def __init__(self, schema: Schema):
        super().__init__()
        self.schema = schema
        self.linear = LinearTerm(schema)

    def forward(self, batch):
        return self.linear(batch)  # [B]
