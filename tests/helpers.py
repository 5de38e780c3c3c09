"""Assertions several test files share (imported as ``from helpers import ...``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ctrlib import fit


def assert_memorises(model, train, name: str, epochs: int = 150, n: int = 64, lr: float = 1e-2) -> None:
    """The classic bug detector: a model that cannot memorise ``n`` samples is broken (a detached
    gradient, a wrong mask, a dead branch). Inference must return plain ``[n]`` logits."""
    tiny = train.subset(torch.arange(n))
    fit(model, tiny, None, epochs=epochs, batch_size=n, lr=lr, progress=False)
    model.eval()
    logits = model(tiny.tensors)
    assert logits.shape == (n,), f"{name}: inference returns {tuple(logits.shape)}, not plain [{n}] logits"
    loss = F.binary_cross_entropy_with_logits(logits, tiny["label"])
    assert loss < 0.2, f"{name} cannot memorise {n} samples (loss {loss:.3f})"
