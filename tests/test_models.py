"""Every model: shapes, a tiny batch overfits, same seed -> same numbers."""
import pytest
import torch

from ctrlib import evaluate, fit, seed_everything
from ctrlib.data import CTRWorld, TensorData, split_by_time
from ctrlib.models import DCN, DLRM, FM, DeepFM, LogisticRegression
from helpers import assert_memorises

MODELS = {
    "lr": lambda s: LogisticRegression(s),
    "fm": lambda s: FM(s, 8),
    "deepfm": lambda s: DeepFM(s, 8, (32, 16)),
    "dcn_v1": lambda s: DCN(s, 8, (32,), cross_layers=2, version=1),
    "dcn_v2_stacked_lowrank": lambda s: DCN(s, 8, (32,), cross_layers=2, version=2, low_rank=4, structure="stacked"),
    "dlrm": lambda s: DLRM(s, 8, (32,)),
}


@pytest.fixture(scope="module")
def world_data():
    world = CTRWorld(seed=0, n_users=300, n_items=200, history_len=6)
    df = world.sample(6000, seed=0)
    schema = world.schema()
    return schema, [TensorData.from_frame(d, schema) for d in split_by_time(df)]


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_tiny_batch_overfits(name, world_data):
    schema, (train, _, _) = world_data
    seed_everything(0)
    model = MODELS[name](schema)
    assert model(next(train.batches(64))).shape == (64,)
    assert_memorises(model, train, name, epochs=300 if name == "lr" else 150)


def test_same_seed_same_numbers(world_data):
    schema, (train, valid, test) = world_data
    runs = []
    for _ in range(2):
        seed_everything(1)
        model = DeepFM(schema, 8, (32, 16), dropout=0.1)
        result = fit(model, train, valid, epochs=2, batch_size=256)
        runs.append((result.history.drop(columns="seconds"), evaluate(model, test)))
    assert runs[0][0].equals(runs[1][0]) and runs[0][1] == runs[1][1]


def test_early_stopping_restores_the_best_epoch(world_data):
    schema, (train, valid, _) = world_data
    seed_everything(0)
    model = DeepFM(schema, 8, (64, 64))
    result = fit(model, train, valid, epochs=30, batch_size=64, lr=1e-2, patience=2)
    assert len(result.history) < 30  # memorising 4,800 samples at lr 1e-2 stops improving validation
    best = result.history.valid_auc.max()
    assert result.history.valid_auc.iloc[result.best_epoch - 1] == best
    assert evaluate(model, valid)["auc"] == pytest.approx(best)


def test_fit_errors_are_clear(world_data):
    schema, (train, valid, _) = world_data
    model = LogisticRegression(schema)
    with pytest.raises(ValueError, match="monitor"):
        fit(model, train, valid, monitor="accuracy")
    with pytest.raises(KeyError, match="lacks columns"):
        fit(model, TensorData({k: v for k, v in train.tensors.items() if k != "label"}), None)
    with pytest.raises(KeyError, match="loss_mask"):
        fit(model, train, None, loss_mask="train_event")
    with pytest.raises(KeyError, match="monitored 'auc'"):
        fit(model, train, lambda m: {"logloss": 0.5}, epochs=1)


def test_dict_outputs_and_aux_loss_hook(world_data):
    schema, (train, valid, _) = world_data

    class WithAux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.schema, self.inner = schema, LogisticRegression(schema)

        def forward(self, batch):
            return {"label": self.inner(batch), "aux_loss": 100 * self.inner.linear.bias ** 2}

    seed_everything(0)
    model = WithAux()
    fit(model, train, valid, epochs=2, lr=0.05)
    assert abs(model.inner.linear.bias.item()) < 0.1  # the auxiliary loss pinned the bias near 0


def test_loss_mask_and_a_validation_function():
    """[B, N] logits where only the masked positions count: NaN labels elsewhere must not reach the
    loss; a validation function replaces evaluate() for early stopping."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    label = (x > 0).float()
    mask = torch.rand(64, 5, generator=g) < 0.5
    data = TensorData({"x": x, "label": torch.where(mask, label, torch.nan), "train_event": mask})

    class PerPosition(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            return self.w * batch["x"]  # [B, N]

    model, calls = PerPosition(), []

    def valid(m):
        calls.append(1)
        return {"auc": m.w.item()}  # grows while w grows

    result = fit(model, data, valid, epochs=5, batch_size=16, lr=0.1, loss_mask="train_event")
    assert result.history["train_loss"].notna().all() and model.w.item() > 0.3
    assert len(calls) == 5 and result.best_epoch == 5


def test_bf16_autocast_warns_on_a_cpu_without_native_bf16(world_data, monkeypatch):
    import ctrlib.train
    schema, (train, _, _) = world_data
    monkeypatch.setattr(ctrlib.train, "_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        fit(LogisticRegression(schema), train.subset(torch.arange(64)), None, epochs=1, autocast="bf16")


# -- stages and partial training (the one-epoch chapter) -----------------------------------------

def test_fractional_epoch_evaluation(world_data):
    """eval_every=0.25 validates four times per epoch at fractional epochs, on_eval sees each
    checkpoint, early stopping restores the best of them, and eval_every=1 is the per-epoch fit."""
    schema, (train, valid, _) = world_data
    seen = []

    def on_eval(model, epoch):
        seen.append(epoch)
        return {"seen_at": epoch}

    seed_everything(0)
    model = DeepFM(schema, 8, (32,))
    result = fit(model, train, valid, epochs=2, batch_size=256, eval_every=0.25, on_eval=on_eval, patience=5)
    n = train.num_batches(256)
    quarters = [round(n * f) / n for f in (0.25, 0.5, 0.75)]
    expected = quarters + [1] + [1 + q for q in quarters] + [2]
    assert result.history.epoch.tolist() == pytest.approx(expected) and seen == pytest.approx(expected)
    assert result.history.seen_at.tolist() == pytest.approx(expected)
    best = result.history.valid_auc.idxmax()
    assert result.best_epoch == pytest.approx(expected[best]) and evaluate(model, valid)["auc"] == pytest.approx(
        result.history.valid_auc.max())
    runs = []
    for every in (None, 1.0):
        seed_everything(0)
        runs.append(fit(DeepFM(schema, 8, (32,)), train, valid, epochs=2, batch_size=256, eval_every=every)
                    .history.drop(columns="seconds"))
    assert runs[0].equals(runs[1])
    seed_everything(0)  # patience counts epochs: 1 epoch = 4 validations without improvement
    capped = fit(DeepFM(schema, 8, (64, 64)), train, valid, epochs=30, batch_size=64, lr=1e-2, patience=1,
                 eval_every=0.25)
    assert capped.stop_reason == "early stopping"
    assert (capped.history.epoch > capped.best_epoch).sum() == 4
    with pytest.raises(ValueError, match="eval_every"):
        fit(model, train, valid, eval_every=1.5)


def _state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("update", ["sparse", "dense"])
@pytest.mark.parametrize("freeze", [("embeddings",), ("dense",), ("table:item_id",)])
def test_freezing_really_freezes(world_data, update, freeze):
    """Frozen parameters (or one table's rows) are bit-identical after training; the rest trains."""
    schema, (train, valid, _) = world_data
    seed_everything(0)
    model = DeepFM(schema, 8, (32,))
    before = _state(model)
    fit(model, train, valid, epochs=2, batch_size=256, embedding_update=update, embedding_l2=1e-4, freeze=freeze,
        grad_clip=10.0)
    after = _state(model)
    tables = {n for n in after if n.endswith("embedding.weight") or n.endswith("weights.weight")}
    assert tables, sorted(after)
    if freeze == ("table:item_id",):
        emb = model.embedding
        start, stop = emb.table_offsets["item_id"], emb.table_offsets["item_id"] + schema.tables["item_id"]
        w0, w1 = before["embedding.weight"], after["embedding.weight"]
        assert torch.equal(w0[start:stop], w1[start:stop])
        assert not torch.equal(w0[:start], w1[:start]) or not torch.equal(w0[stop:], w1[stop:])
        return
    frozen = tables if freeze == ("embeddings",) else set(after) - tables
    for name in after:
        same = torch.equal(before[name], after[name])
        assert same == (name in frozen), (name, same)
    assert all(p.requires_grad for p in model.parameters())  # fit hands the parameters back trainable


def test_freeze_names_are_checked(world_data):
    schema, (train, valid, _) = world_data
    model = DeepFM(schema, 8, (32,))
    with pytest.raises(ValueError, match="matches no parameter"):
        fit(model, train, valid, epochs=1, freeze=("tower",))
    with pytest.raises(ValueError, match="names no embedding table"):
        fit(model, train, valid, epochs=1, freeze=("table:nope",))
    with pytest.raises(ValueError, match="nothing would train"):
        fit(model, train, valid, epochs=1, freeze=("embeddings", "dense"))
    with pytest.raises(TypeError, match="tuple"):
        fit(model, train, valid, epochs=1, freeze="dense")


def test_embedding_lr_and_sgd(world_data):
    """embedding_lr is the tables' own lr (equal to lr: the same fit); SGD moves a weight by -lr * grad."""
    schema, (train, valid, _) = world_data
    runs = {}
    for name, extra in {"default": {}, "same": {"embedding_lr": 1e-3}, "slow": {"embedding_lr": 1e-5}}.items():
        seed_everything(0)
        model = DeepFM(schema, 8, (32,))
        start = model.embedding.weight.detach().clone()
        fit(model, train, None, epochs=1, batch_size=256, **extra)
        runs[name] = (model.embedding.weight.detach() - start).abs().max().item()
    assert runs["default"] == runs["same"] and runs["slow"] < runs["default"] / 10
    seed_everything(0)
    model = LogisticRegression(schema)
    one = train.subset(torch.arange(128))
    bias = model.linear.bias.detach().clone()
    fit(model, one, None, epochs=1, batch_size=128, lr=0.5, optimizer="sgd")
    seed_everything(0)
    fresh = LogisticRegression(schema)  # the same start: one step of SGD on the mean BCE
    grad = (torch.sigmoid(fresh(one.tensors)) - one["label"]).mean()           # d loss / d bias
    assert model.linear.bias.item() == pytest.approx((bias - 0.5 * grad).item(), abs=1e-6)


def test_table_lr_gives_one_table_its_own_lr(world_data):
    """One table inside the shared embedding parameter steps at its own lr (lazy Adam rows)."""
    schema, (train, _, _) = world_data
    moved = {}
    for name, table_lr in {"none": None, "same": {"item_id": 1e-3}, "slow": {"item_id": 1e-6}}.items():
        seed_everything(0)
        model = DeepFM(schema, 8, (32,))
        start = model.embedding.weight.detach().clone()
        fit(model, train, None, epochs=1, batch_size=256, table_lr=table_lr)
        emb = model.embedding
        lo, hi = emb.table_offsets["item_id"], emb.table_offsets["item_id"] + schema.tables["item_id"]
        change = (emb.weight.detach() - start).abs()
        moved[name] = (change[lo:hi].max().item(), change[:lo].max().item())
    assert moved["none"] == moved["same"]
    assert moved["slow"][0] < moved["none"][0] / 100 and moved["slow"][1] > moved["none"][1] / 10
    with pytest.raises(ValueError, match="lazy Adam"):
        fit(model, train, None, epochs=1, table_lr={"item_id": 1e-4}, embedding_update="dense")
