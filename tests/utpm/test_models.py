"""Contract tests for every model of the zoo, plus the layers' own invariants (tiny preset, CPU)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import Tensor

from utpm.features import FeatureEncoder, FieldKind, FieldSpec, Vocabulary
from utpm.models import (
    ACTIVATIONS,
    MODEL_NAMES,
    Preset,
    UserModel,
    build_model,
    default_loss,
    explain,
    feature_weights,
    get_preset,
    joint_loss,
)
from utpm.models.layers import AttentionFusion, AttentionUnit, CrossFeature, masked_softmax
from utpm.models.layers.tower import ACTIVATION_MODULES

TINY = get_preset("tiny")
N_TAGS = 12
B = 4
SPECS = [
    FieldSpec("clicked_tags", FieldKind.MULTI, vocab_size=20, max_len=5),
    FieldSpec("clicked_categories", FieldKind.MULTI, vocab_size=8, max_len=3),
    FieldSpec("gender", FieldKind.SINGLE, vocab_size=4, max_len=1),
]
M = len(SPECS)


def make_inputs(seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """B users with ragged fields: user 1 has 3 tags, user 2 no category, user 3 no gender."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(2, s.vocab_size, (B, s.max_len), generator=g) for s in SPECS]
    masks = [torch.ones(B, s.max_len) for s in SPECS]
    masks[0][1, 3:] = 0
    masks[1][2] = 0
    masks[2][3] = 0
    for i, m in zip(ids, masks, strict=True):
        i[m == 0] = 0  # padding id where padded, as the encoder writes it
    return ids, masks


def make_items(seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    k, n = TINY.K, TINY.N
    tags = torch.randint(1, N_TAGS, (B, k, n), generator=g)
    tag_mask = torch.ones(B, k, n)
    tag_mask[:, :, -1] = 0
    tags[tag_mask == 0] = 0
    labels = torch.randint(0, 2, (B, k), generator=g).float()
    label_mask = torch.ones(B, k)
    label_mask[0, -1] = 0
    return tags, tag_mask, labels, label_mask


def build(name: str, seed: int = 0, preset: Preset = TINY) -> UserModel:
    return build_model(name, SPECS, N_TAGS, preset, seed=seed)


def heads_of(name: str) -> int:
    return 1 if name in ("youtube", "af1-unshared", "af1") else TINY.heads


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    ids, masks = make_inputs()
    model = build(name)
    assert model.name == name and model.specs == SPECS and model.preset is TINY

    # forward shapes
    u = model(ids, masks)
    assert u.shape == (B, TINY.U)
    u2, field_w, merge_w = model.forward_with_attention(ids, masks)
    assert torch.equal(u, u2)
    n = heads_of(name)
    assert len(field_w) == M
    for w, s, m in zip(field_w, SPECS, masks, strict=True):
        assert w.shape == (B, n, s.max_len)
        expected = (m.sum(-1) > 0).float().unsqueeze(-1).expand(B, n)  # 1 per head, 0 if empty field
        torch.testing.assert_close(w.sum(-1), expected)
        assert torch.all(w[m.unsqueeze(1).expand_as(w) == 0] == 0)  # padded values get no weight
    assert merge_w.shape == (B, n, M)
    torch.testing.assert_close(merge_w.sum(-1), torch.ones(B, n))
    assert merge_w[2, :, 1].abs().sum() == 0 and merge_w[3, :, 2].abs().sum() == 0  # empty fields

    # one backward step: finite gradients for every parameter, and the parameters move
    assert model.tag_embedding.weight.shape == (N_TAGS, TINY.U) and model.tag_embedding.padding_idx == 0
    tags, tag_mask, labels, label_mask = make_items()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = joint_loss(model.item_logits(model(ids, masks), tags, tag_mask), labels, label_mask)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    opt.step()
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(before["tag_embedding.weight"], after["tag_embedding.weight"])

    # state_dict round trip through bytes into a differently seeded model
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = build(name, seed=123)
    assert not torch.equal(clone(ids, masks), model(ids, masks))
    clone.load_state_dict(torch.load(buf))
    assert torch.equal(clone(ids, masks), model(ids, masks))

    # seeded determinism, independent of the global RNG
    torch.manual_seed(99)
    a = build(name, seed=7)(ids, masks)
    torch.rand(10)
    b = build(name, seed=7)(ids, masks)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_never_changes_output(name: str) -> None:
    ids, masks = make_inputs()
    model = build(name)
    u = model(ids, masks)
    g = torch.Generator().manual_seed(5)
    # random ids where the mask is 0
    noisy = [
        torch.where(m > 0, i, torch.randint(1, s.vocab_size, i.shape, generator=g))
        for i, m, s in zip(ids, masks, SPECS, strict=True)
    ]
    torch.testing.assert_close(model(noisy, masks), u, rtol=0, atol=1e-6)
    # extra padded positions holding random ids
    longer_ids = [
        torch.cat([i, torch.randint(1, s.vocab_size, (B, 3), generator=g)], 1) for i, s in zip(ids, SPECS, strict=True)
    ]
    longer_masks = [torch.cat([m, torch.zeros(B, 3)], 1) for m in masks]
    u_long, field_w, _ = model.forward_with_attention(longer_ids, longer_masks)
    torch.testing.assert_close(u_long, u, rtol=0, atol=1e-6)
    assert all(torch.all(w[..., -3:] == 0) for w in field_w)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_inputs_give_finite_output(name: str) -> None:
    ids, masks = make_inputs()
    empty_masks = [torch.zeros_like(m) for m in masks]
    model = build(name)
    u, field_w, merge_w = model.forward_with_attention([torch.zeros_like(i) for i in ids], empty_masks)
    assert torch.isfinite(u).all()
    assert all(torch.all(w == 0) for w in field_w) and torch.all(merge_w == 0)
    # gradients through an all-empty batch stay finite too
    u.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a single empty field in an otherwise full user (user 2's categories) changes nothing else
    assert torch.isfinite(model(ids, masks)).all()


def test_masked_softmax_all_masked_row_is_zero_not_nan() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1e4, -1e4, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    w = masked_softmax(scores, mask)
    e1, e2 = torch.exp(torch.tensor(1.0)), torch.exp(torch.tensor(2.0))
    torch.testing.assert_close(w[0], torch.stack([e1 / (e1 + e2), e2 / (e1 + e2), torch.tensor(0.0)]))
    assert torch.equal(w[1], torch.zeros(3))
    torch.testing.assert_close(w[2], torch.tensor([0.0, 0.0, 1.0]))  # a huge padded score is ignored
    (w * torch.arange(3.0)).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert torch.all(scores.grad[mask == 0] == 0)


def _fusion(model: UserModel) -> AttentionFusion:
    assert isinstance(model.fusion, AttentionFusion)
    return model.fusion


def test_shared_query_is_one_parameter_used_by_every_unit() -> None:
    model = build("utpm")
    fusion = _fusion(model)
    q = fusion.query
    assert isinstance(q, torch.nn.Parameter) and q.shape == (TINY.heads, TINY.T)
    assert all(fusion.unit_query(i) is q for i in range(M + 1))
    query_params = [n for n, p in model.named_parameters() if p.shape == q.shape and "query" in n]
    assert query_params == ["fusion.query"]

    # every unit (M field units + the merge unit) is called with that very object
    seen: list[Tensor] = []
    units = [*fusion.field_units, fusion.merge_unit]
    hooks = [u.register_forward_pre_hook(lambda _m, args: seen.append(args[2])) for u in units]
    ids, masks = make_inputs()
    model(ids, masks)
    for h in hooks:
        h.remove()
    assert len(seen) == M + 1 and all(s is q for s in seen)

    # perturbing q changes every unit's scores
    g = torch.Generator().manual_seed(0)
    for unit in units:
        assert isinstance(unit, AttentionUnit)
        values = torch.randn(2, TINY.heads, 3, TINY.E, generator=g)
        with torch.no_grad():
            s0 = unit.scores(values, q)
            s1 = unit.scores(values, q + 0.5)
        assert not torch.allclose(s0, s1)


def test_unshared_model_has_one_query_per_unit() -> None:
    model = build("af1-unshared")
    fusion = _fusion(model)
    assert fusion.query is None and fusion.heads == 1
    queries = [fusion.unit_query(i) for i in range(M + 1)]
    assert len({id(q) for q in queries}) == M + 1
    assert all(isinstance(q, torch.nn.Parameter) and q.shape == (1, TINY.T) for q in queries)
    assert sum(1 for n, _ in model.named_parameters() if "quer" in n) == M + 1


def test_af1_shares_a_single_head_query() -> None:
    fusion = _fusion(build("af1"))
    assert fusion.heads == 1 and fusion.query is not None and fusion.query.shape == (1, TINY.T)


def test_cross_feature_size_and_values_match_a_loop() -> None:
    torch.manual_seed(0)
    d, c = 5, 3
    layer = CrossFeature(d, c)
    x = torch.randn(2, d)
    z = layer(x, torch.zeros(2, 1, d), torch.ones(2, 1))
    assert layer.out_dim == d * (d - 1) // 2 + d and z.shape == (2, layer.out_dim)
    v = layer.v.detach()
    expected = [
        [float(v[i] @ v[j]) * float(x[b, i]) * float(x[b, j]) for i in range(d) for j in range(i + 1, d)]
        for b in range(2)
    ]
    torch.testing.assert_close(z[:, d:], torch.tensor(expected))
    torch.testing.assert_close(z[:, :d], x / x.norm(dim=-1, keepdim=True))
    # in the model, CF crosses the concatenated heads: D = heads * E
    cross = build("utpm").cross
    dim = TINY.heads * TINY.E
    assert isinstance(cross, CrossFeature) and cross.out_dim == dim * (dim - 1) // 2 + dim


def test_item_and_tag_logits() -> None:
    model = build("utpm")
    u = torch.randn(B, TINY.U)
    tags, tag_mask, _, _ = make_items()
    per_tag = model.tag_logits(u, tags, tag_mask)
    assert per_tag.shape == (B, TINY.K, TINY.N)
    t = model.tag_embedding.weight.detach()
    b, k, n = 1, 2, 0
    torch.testing.assert_close(per_tag[b, k, n], u[b] @ t[tags[b, k, n]])
    assert torch.all(per_tag[tag_mask == 0] == 0)
    torch.testing.assert_close(model.item_logits(u, tags, tag_mask), per_tag.sum(-1))


def test_explain_and_feature_weights() -> None:
    vocabs = {
        "clicked_tags": Vocabulary.build(["comedy", "anime", "drama", "anime"]),
        "clicked_categories": Vocabulary.build(["film", "tv"]),
        "gender": Vocabulary.build(["m", "f"]),
    }
    specs = [
        FieldSpec("clicked_tags", FieldKind.MULTI, len(vocabs["clicked_tags"]), 4),
        FieldSpec("clicked_categories", FieldKind.MULTI, len(vocabs["clicked_categories"]), 2),
        FieldSpec("gender", FieldKind.SINGLE, len(vocabs["gender"]), 1),
    ]
    encoder = FeatureEncoder(specs, vocabs)
    batch = encoder.encode([{"clicked_tags": ["anime", "comedy", "zzz"], "gender": ["f"]}, {}])
    ids = [torch.from_numpy(batch.ids[s.name]) for s in specs]
    masks = [torch.from_numpy(batch.mask[s.name]) for s in specs]
    for name in ("utpm", "youtube"):
        model = build_model(name, specs, N_TAGS, TINY, seed=0)
        ex = explain(model, ids, masks)
        assert ex.field_names == encoder.field_names and ex.u.shape == (2, TINY.U)
        assert ex.heads == heads_of(name) and ex.merge_weights.shape == (2, ex.heads, 3)
        rows = feature_weights(ex, encoder, 0)
        assert [(r["field"], r["value"]) for r in rows] == [
            ("clicked_tags", "anime"),
            ("clicked_tags", "comedy"),
            ("clicked_tags", "<oov>"),
            ("gender", "f"),
        ]
        assert all(len(r["weights"]) == ex.heads and len(r["field_weights"]) == ex.heads for r in rows)
        assert sum(r["weights"][0] for r in rows if r["field"] == "clicked_tags") == pytest.approx(1.0)
        assert feature_weights(ex, encoder, 1) == []  # a user without features
        if name == "youtube":
            assert all(r["weights"] == [pytest.approx(1 / 3)] for r in rows[:3])
    with pytest.raises(ValueError, match="user index"):
        feature_weights(ex, encoder, 2)


def test_registry_and_presets() -> None:
    assert "utpm" in MODEL_NAMES and "af2-cf" in MODEL_NAMES and len(set(MODEL_NAMES)) == len(MODEL_NAMES)
    with pytest.raises(ValueError, match="af2-cf"):
        build_model("nope", SPECS, N_TAGS, TINY)
    assert default_loss("utpm") == "joint"
    assert {default_loss(n) for n in MODEL_NAMES if n != "utpm"} == {"separate"}
    ml = get_preset("movielens")
    assert (ml.E, ml.H, ml.T, ml.F, ml.C, ml.U, ml.K, ml.N, ml.heads) == (16, 10, 8, 8, 4, 16, 10, 3, 2)
    ind = get_preset("industrial")
    assert (ind.E, ind.H, ind.T, ind.F, ind.C, ind.U, ind.K, ind.N) == (128, 100, 32, 32, 10, 128, 30, 5)
    with pytest.raises(ValueError, match="tiny"):
        get_preset("huge")
    study = ml.replace(E=8, heads=4, C=2, activation="tanh")
    assert (study.E, study.heads, study.C, study.activation, study.name) == (8, 4, 2, "tanh", "movielens")
    assert ml.fc_hidden == 4 * ml.U and ml.replace(U=8).fc_hidden == 32 and ml.replace(hidden=7).fc_hidden == 7
    assert Preset.from_dict(study.to_dict()) == study
    with pytest.raises(ValueError, match="activation"):
        ml.replace(activation="swish")
    with pytest.raises(ValueError, match="E must be"):
        ml.replace(E=0)
    assert set(ACTIVATIONS) == set(ACTIVATION_MODULES)
    # a shared query serves both levels: T must equal F, and the error names both
    with pytest.raises(ValueError, match=r"\b4\b.*\b6\b"):
        build("utpm", preset=TINY.replace(F=6))
    assert build("af1-unshared", preset=TINY.replace(F=6))(*make_inputs()).shape == (B, TINY.U)
    with pytest.raises(ValueError, match="n_tags"):
        build_model("utpm", SPECS, 1, TINY)
    ids, masks = make_inputs()
    with pytest.raises(ValueError, match="3 fields"):
        build("utpm")(ids[:2], masks[:2])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hyper_parameter_variants_build(activation: str) -> None:
    preset = TINY.replace(E=3, heads=3, C=2, activation=activation)
    u, field_w, _ = build("utpm", preset=preset).forward_with_attention(*make_inputs())
    assert u.shape == (B, preset.U) and field_w[0].shape == (B, 3, 5) and torch.isfinite(u).all()


def test_the_cross_layers_row_gathers_give_the_column_gathers_values_and_gradients_bit_for_bit() -> None:
    """CrossFeature gathers rows of x transposed (fast in ONNX Runtime); what it computes, and what training
    gets back, must be what the plain column gathers give, to the bit, so that runs reproduce."""
    from utpm.models.layers.cross import CrossFeature

    torch.manual_seed(0)
    layer = CrossFeature(32, 4)
    x0, w = torch.randn(64, 32), torch.randn(layer.n_pairs, 3)
    rows, cols = layer.rows, layer.cols

    def run(plain: bool) -> list[torch.Tensor]:
        layer.zero_grad()
        x = x0.clone().requires_grad_(True)
        if plain:
            corr = (layer.v[rows] * layer.v[cols]).sum(dim=-1)
            c = corr * x[:, rows] * x[:, cols]
        else:
            c = layer.cross(x)
        (c @ w).square().sum().backward()
        assert x.grad is not None and layer.v.grad is not None
        return [c.detach(), x.grad, layer.v.grad.clone()]

    for got, want in zip(run(plain=False), run(plain=True), strict=True):
        assert torch.equal(got, want)
