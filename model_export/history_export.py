"""Export of the default model (utpm-hist): the whole scorer as one ONNX graph, gated on final scores.

`export_bundle` hands a utpm-hist run here. The graph takes the tower's inputs (ids, mask and counts
per field) and the user's history features (`hist_feats` (B, Hh, P), `hist_mask` (B, Hh), Hh
dynamic) and returns u, the attention weights and `history_scores` g(phi) (B, Hh). The engine adds
the rest (`model_export.scorer`): s(u, t) = u . o_t + b_t + g(phi_ut), with o_t and b_t in the bundle
(tag_embeddings.npy, tag_bias.npy). Parity is checked on u, on g and on the final scores and top-k
against PyTorch's own `HistoryModel.scores`, over the same cases as the paper's export plus users
sent with counts.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from model_export.bundle import load_history_encoder
from model_export.errors import ParityError
from model_export.inputs import history_feed
from model_export.manifest import (
    BIAS_FILE,
    EMBEDDINGS_FILE,
    ENCODER_DIR,
    HELDOUT_FILE,
    HELDOUT_HISTORY_FILE,
    HIST_FEATS_INPUT,
    HIST_MASK_INPUT,
    HISTORY_ARRAYS_FILE,
    HISTORY_SCORES_OUTPUT,
    ONNX_FILE,
    REFERENCE_FILE,
    REFERENCE_USERS,
    TAGS_FILE,
    USER_EMBEDDING_OUTPUT,
    Manifest,
    attention_output,
    counts_input,
    ids_input,
    mask_input,
)
from model_export.parity import (
    HistoryCase,
    HistoryRunner,
    ParityReport,
    check_history_parity,
    history_parity_cases,
    slice_history,
)
from model_export.scorer import linear_phi_weights
from model_export.session import SessionConfig, build_session
from model_export.trace import trace_onnx
from utpm.features.history import ITEM_FIELD, PHI_NAMES, HistoryBatch
from utpm.features.vocab import Vocabulary
from utpm.models.history import HistoryModel
from utpm.ranking import top_k as ranked_top_k
from utpm.training.history import batch_tensors

PARITY_SESSION = SessionConfig(prefer_gpu=False, warmup=False)
SCORER_KIND = "utpm-hist"
# users per dense PyTorch score block in the reference runner: 64M cells = 256 MB at float32
_DENSE_CELLS = 64_000_000


class _ScorerForExport(nn.Module):
    """Flat inputs (ids_0, mask_0, counts_0, ids_1, ..., hist_feats, hist_mask) -> (u, attention per
    field..., merge attention, g(phi))."""

    def __init__(self, model: HistoryModel) -> None:
        super().__init__()
        self.model = model
        self.m = len(model.specs)

    def forward(self, *flat: Tensor) -> tuple[Tensor, ...]:
        m = self.m
        ids, masks, counts = list(flat[0 : 3 * m : 3]), list(flat[1 : 3 * m : 3]), list(flat[2 : 3 * m : 3])
        u, field_weights, merge_weights = self.model.user_vector(ids, masks, counts)
        g = self.model.history_scores(flat[3 * m], flat[3 * m + 1])
        return (u, *field_weights, merge_weights, g)


def scorer_input_names(model: HistoryModel) -> list[str]:
    names = [n for s in model.specs for n in (ids_input(s.name), mask_input(s.name), counts_input(s.name))]
    return [*names, HIST_FEATS_INPUT, HIST_MASK_INPUT]


def scorer_output_names(model: HistoryModel) -> list[str]:
    return [
        USER_EMBEDDING_OUTPUT,
        *(attention_output(s.name) for s in model.specs),
        "attn_merge",
        HISTORY_SCORES_OUTPUT,
    ]


def export_scorer_onnx(model: HistoryModel, path: Path, opset: int, width: int) -> tuple[list[str], list[str]]:
    """Trace the scorer to `path`; returns the graph's own (inputs, outputs): an input the model
    does not use (counts or history when switched off) is dropped by the exporter."""
    example: list[Tensor] = []
    for s in model.specs:
        example += [
            torch.ones(2, s.max_len, dtype=torch.int64),
            torch.ones(2, s.max_len, dtype=torch.float32),
            torch.ones(2, s.max_len, dtype=torch.float32),
        ]
    example += [torch.ones(2, 3, width), torch.ones(2, 3)]
    names_in, names_out = scorer_input_names(model), scorer_output_names(model)
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names_in + names_out}
    for n in (HIST_FEATS_INPUT, HIST_MASK_INPUT, HISTORY_SCORES_OUTPUT):
        axes[n] = {0: "batch", 1: "history"}
    trace_onnx(model, _ScorerForExport(model), example, path, names_in, names_out, axes, opset)
    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def torch_history_runner(model: HistoryModel, top_k: int) -> HistoryRunner:
    """PyTorch eager: [u, attention..., g, top-k ids, top-k final scores] from `HistoryModel.scores`."""

    def run(b: HistoryBatch) -> list[np.ndarray]:
        ids, masks, counts, hid, hf, hm = batch_tensors(b)
        with torch.inference_mode():
            u, fw, mw = model.user_vector(ids, masks, counts)
            g = model.history_scores(hf, hm)
            step = max(1, _DENSE_CELLS // model.n_tags)
            top_ids, top_scores = [], []
            for lo in range(0, b.size, step):
                sl = slice(lo, lo + step)
                s = model.scores(
                    [x[sl] for x in ids], [x[sl] for x in masks], [x[sl] for x in counts], hid[sl], hf[sl], hm[sl]
                )
                s[:, : Vocabulary.OOV + 1] = -torch.inf
                ids_k = ranked_top_k(s.numpy(), min(top_k, model.n_tags - 2))
                top_ids.append(ids_k)
                top_scores.append(np.take_along_axis(s.numpy(), ids_k, axis=1))
        return [
            u.numpy(),
            *(w.numpy() for w in fw),
            mw.numpy(),
            g.numpy(),
            np.concatenate(top_ids),
            np.concatenate(top_scores),
        ]

    return run


def onnx_history_runner(session: ort.InferenceSession, field_names: Sequence[str]) -> HistoryRunner:
    """ONNX Runtime on a history batch -> [u, attention..., g]."""
    inputs = [i.name for i in session.get_inputs()]

    def run(b: HistoryBatch) -> list[np.ndarray]:
        feed = history_feed(inputs, field_names, b.ids, b.masks, b.counts, b.hist_feats, b.hist_mask)
        return [np.asarray(o) for o in session.run(None, feed)]

    return run


def _linear_weights(model: HistoryModel, table: np.ndarray) -> list[float] | None:
    g = model.g
    if g is None:
        return linear_phi_weights(table, None, None)
    last = g.mlp[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        out = torch.cat([last.weight.ravel(), last.bias.ravel()]).numpy()
        return linear_phi_weights(table, out, g.linear.weight.numpy())


def _pad_cat(parts: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts]).astype(dtype)


def export_history_bundle(
    run: Any,
    out: Path,
    *,
    data: Path | None,
    synthetic_inputs: bool,
    opset: int,
    parity_users: int,
    atol: float,
    top_k: int,
    min_agreement: float,
    overwrite: bool,
    seed: int,
    say: Callable[[str], None],
    linear_scorer: bool = True,
) -> Manifest:
    """The utpm-hist half of `onnx_export.export_bundle` (same guarantees: nothing is put in place
    unless parity holds). A model that is exactly b_t + w . phi is marked for the service's linear
    path, and that path is gated too; linear_scorer=False leaves the mark out (A/B benchmarks)."""
    from model_export.onnx_export import finish_bundle, heldout_users

    model: HistoryModel = run.model
    encoder, tags, run_path = run.encoder, run.tags, Path(run.path)
    options = model.options
    scorer: dict[str, Any] = {
        "kind": SCORER_KIND,
        "max_history_tags": options.max_history_tags,
        "phi_names": list(PHI_NAMES),
        "options": options.to_dict(),
        "bias_file": BIAS_FILE,
        "heldout_history": HELDOUT_HISTORY_FILE,
    }
    henc = load_history_encoder(run_path, encoder, tags, scorer)
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        say("copying vocabularies, tag table and tag bias")
        shutil.copytree(run_path / ENCODER_DIR, tmp / ENCODER_DIR)
        shutil.copy2(run_path / TAGS_FILE, tmp / TAGS_FILE)
        if (run_path / HISTORY_ARRAYS_FILE).is_file():
            shutil.copy2(run_path / HISTORY_ARRAYS_FILE, tmp / HISTORY_ARRAYS_FILE)
        with torch.no_grad():
            # u . o_t is off in the tower=False ablation: a zero table scores it as the model does
            table = (model.output_table() * float(options.tower)).numpy().astype(np.float32, copy=True)
            bias = model.tag_bias.numpy().astype(np.float32, copy=True)
        np.save(tmp / EMBEDDINGS_FILE, table)
        np.save(tmp / BIAS_FILE, bias)
        linear = _linear_weights(model, table) if linear_scorer else None
        if linear is not None:
            scorer["linear_phi_weights"] = linear
            say("the model is its linear start (a zero tag table, a zero history MLP): served without the tower")

        say(f"exporting the whole scorer (tower and history path) to ONNX (opset {opset})")
        width = len(PHI_NAMES)  # P, the features per (user, tag) the history path reads
        names_in, names_out = export_scorer_onnx(model, tmp / ONNX_FILE, opset, width)
        scorer["inputs"], scorer["outputs"] = names_in, names_out

        users, source = heldout_users(
            run.config,
            encoder,
            data=data,
            synthetic=synthetic_inputs,
            n=parity_users,
            rng=rng,
            extra_fields=[ITEM_FIELD],
        )
        say(f"checking parity of u, g(phi) and the final top-{top_k} on {len(users)} {source}")
        cases = history_parity_cases(henc, users, rng)
        session = build_session(tmp / ONNX_FILE, PARITY_SESSION)
        report: ParityReport = check_history_parity(
            cases,
            torch_history_runner(model, top_k),
            onnx_history_runner(session, encoder.field_names),
            table,
            bias,
            atol=atol,
            top_k=top_k,
            min_agreement=min_agreement,
            linear=None if linear is None else np.asarray(linear, np.float32),
        )
        reason = report.failure()
        if reason is not None:
            raise ParityError(f"{ONNX_FILE} does not reproduce PyTorch: {reason}")
        np.save(tmp / HELDOUT_FILE, np.concatenate(report.outputs["heldout"]).astype(np.float32))
        np.savez(
            tmp / HELDOUT_HISTORY_FILE,
            hist_ids=_pad_cat(report.outputs["heldout_hist_ids"], np.int64),
            hist_g=_pad_cat(report.outputs["heldout_g"], np.float32),
        )
        heldout = next(c for c in cases if c.name == "heldout")
        write_history_reference(tmp / REFERENCE_FILE, model, heldout, names_in, encoder.field_names)

        manifest = finish_bundle(
            tmp,
            out,
            overwrite,
            run=run,
            run_path=run_path,
            model_name=model.name,
            user_dim=model.preset.U,
            heads=model.base.heads,
            encoder=encoder,
            tag_count=len(tags),
            opset=opset,
            dynamic_axes=["batch", "history"],
            inputs=names_in,
            outputs=names_out,
            parity=report,
            users=len(users),
            source=source,
            scorer=scorer,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def write_history_reference(
    path: Path,
    model: HistoryModel,
    case: HistoryCase,
    input_names: Sequence[str],
    field_names: Sequence[str],
    n: int = REFERENCE_USERS,
) -> None:
    """The first `n` users' graph feed (`feed__<input>`) and PyTorch's u and g for them, re-checked at load."""
    b = slice_history(case.batch, 0, min(n, case.batch.size))
    feed = history_feed(input_names, field_names, b.ids, b.masks, b.counts, b.hist_feats, b.hist_mask)
    ids, masks, counts, _, hf, hm = batch_tensors(b)
    with torch.inference_mode():
        u = model.user_vector(ids, masks, counts)[0].numpy()
        g = model.history_scores(hf, hm).numpy()
    arrays: dict[str, np.ndarray] = {"u": u.astype(np.float32), "g": g.astype(np.float32)}
    arrays.update({f"feed__{k}": v for k, v in feed.items()})
    np.savez(path, **arrays)  # type: ignore[arg-type]
