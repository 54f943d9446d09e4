"""Export a training run to a bundle: the user tower as ONNX, checked against PyTorch before anything is final.

The only module of `model_export` that imports torch. Steps of `export_bundle`, all inside a
temporary directory next to `out` that is renamed into place only when every check passed:

1. copy the run's encoder (feature vocabularies) and tag vocabulary; write the tag embeddings;
2. trace the tower with the TorchScript exporter (`dynamo=False`: it handles the dynamic batch
   axis of this graph reliably, and the graph has no data-dependent control flow to need more);
3. run PyTorch and ONNX Runtime side by side on the parity cases (`parity.parity_cases`) over
   held-out users and refuse the export (ParityError) unless max |du| <= 1e-4 and >= 99% of users
   get the same top-50 tags;
4. save the held-out users' embeddings (for index recall checks) and the opt-in fp16 / int8
   variants with their measured agreement;
5. hash the files into the bundle version and write `manifest.json`.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from model_export.bundle import load_bundle
from model_export.errors import ExportError, ParityError
from model_export.inputs import onnx_feed
from model_export.manifest import (
    EMBEDDINGS_FILE,
    ENCODER_DIR,
    HELDOUT_FILE,
    MANIFEST_FILE,
    METRIC,
    ONNX_FILE,
    REFERENCE_FILE,
    REFERENCE_USERS,
    TAGS_FILE,
    FieldInfo,
    Manifest,
    attention_output,
    content_version,
    hash_files,
    ids_input,
    mask_input,
    variant_file,
)
from model_export.parity import (
    MIN_AGREEMENT,
    PARITY_ATOL,
    TOP_K,
    ParityCase,
    ParityReport,
    Runner,
    check_parity,
    describe_variant,
    parity_cases,
    slice_batch,
    synthetic_users,
)
from model_export.session import SessionConfig, build_session, check_signature
from model_export.trace import trace_onnx
from model_export.variants import VARIANTS, make_variant
from utpm.features.encoding import EncodedBatch, FeatureEncoder, RawFeatures
from utpm.features.spec import FieldSpec
from utpm.models.history import HISTORY_MODEL
from utpm.models.user_model import UserModel

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# Parity sessions run on the CPU with every optimisation, as the service's CPU path does.
PARITY_SESSION = SessionConfig(prefer_gpu=False, warmup=False)


class _TowerForExport(nn.Module):
    """The user tower with flat inputs (ids_0, mask_0, ids_1, mask_1, ...) and flat outputs
    (u (B, U), attention per field (B, heads, H_f)..., merge attention (B, heads, M))."""

    def __init__(self, model: UserModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *flat: Tensor) -> tuple[Tensor, ...]:
        ids, masks = list(flat[0::2]), list(flat[1::2])
        u, field_weights, merge_weights = self.model.forward_with_attention(ids, masks)
        return (u, *field_weights, merge_weights)


def input_names(specs: Sequence[FieldSpec]) -> list[str]:
    return [n for s in specs for n in (ids_input(s.name), mask_input(s.name))]


def output_names(specs: Sequence[FieldSpec]) -> list[str]:
    return ["user_embedding", *(attention_output(s.name) for s in specs), "attn_merge"]


def export_onnx(model: UserModel, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace `model`'s tower to `path`: each field padded to its max length, batch axis dynamic."""
    specs = model.specs
    example: list[Tensor] = []
    for s in specs:
        # Values are irrelevant to a trace without data-dependent branches; OOV ids, all real.
        example += [torch.ones(2, s.max_len, dtype=torch.int64), torch.ones(2, s.max_len, dtype=torch.float32)]
    names_in, names_out = input_names(specs), output_names(specs)
    axes = {n: {0: "batch"} for n in names_in + names_out}
    trace_onnx(model, _TowerForExport(model), example, path, names_in, names_out, axes, opset)


def torch_runner(model: UserModel) -> Runner:
    """PyTorch eager on an encoded batch -> [u, attention per field..., merge attention] as numpy."""
    names = model.field_names

    def run(batch: EncodedBatch) -> list[np.ndarray]:
        with torch.inference_mode():
            u, fw, mw = model.forward_with_attention(
                [torch.from_numpy(batch.ids[n]) for n in names], [torch.from_numpy(batch.mask[n]) for n in names]
            )
        return [u.numpy(), *(w.numpy() for w in fw), mw.numpy()]

    return run


def onnx_runner(session: ort.InferenceSession, field_names: Sequence[str]) -> Runner:
    """ONNX Runtime on an encoded batch -> the same outputs, in the same order."""

    def run(batch: EncodedBatch) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, onnx_feed(batch, field_names))]

    return run


def _users_from_data(
    data: Path, config: dict[str, Any], encoder: FeatureEncoder, n: int, extra_fields: Collection[str] = ()
) -> list[RawFeatures]:
    """Raw features of the run's test users: the protocol re-applied with the run's settings. A run
    that held none out (`--test-share 0`) gets its first n users, which it trained on: parity is a
    numerical check, for which real users' features are the realistic inputs, held out or not."""
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol

    proto = config.get("protocol", {})
    split = split_protocol(
        load_dataset(data),
        seed=int(proto.get("seed", 0)),
        history_fraction=float(proto.get("history_fraction", 0.8)),
        test_fraction=float(proto.get("test_fraction", 0.2)),
    )
    names = set(encoder.field_names) | set(extra_fields)
    rows = split.indices(test=True)[:n] if split.test_fraction > 0 else np.arange(min(n, split.n_users))
    # value lists: the paper models' encoder reads lists, and the history gate draws its own case of
    # {value: count} objects from them
    return [{k: v for k, v in split.request(int(i), counts=False).items() if k in names} for i in rows]  # type: ignore[misc]


def heldout_users(
    run_config: dict[str, Any],
    encoder: FeatureEncoder,
    *,
    data: Path | None,
    synthetic: bool,
    n: int,
    rng: np.random.Generator,
    extra_fields: Collection[str] = (),
) -> tuple[list[RawFeatures], str]:
    """Held-out users' raw features for parity, and a description of where they came from; with
    `extra_fields` (request fields that are no encoder field, such as `clicked_items`) too.

    `data` given: its test users under the run's protocol (an unreadable `data` is an error).
    Otherwise the run's recorded data source (config.json protocol.source) if it is still there,
    else (or with `synthetic`) synthetic users drawn from the vocabularies.
    """
    from utpm.data.errors import DataError

    if not synthetic:
        source = data if data is not None else Path(str(run_config.get("protocol", {}).get("source", "")))
        if data is not None or (str(source) and source.is_dir()):
            try:
                users = _users_from_data(source, run_config, encoder, n, extra_fields)
            except (DataError, OSError, ValueError, KeyError) as e:
                if data is not None:
                    raise ExportError(f"cannot read held-out users from {data}: {e}") from None
                log.warning("run's data %s unreadable (%s); using synthetic users", source, e)
            else:
                if users and float(run_config.get("protocol", {}).get("test_fraction", 0.2)) == 0:
                    return users, f"trained-on users of {source}; the run held none out"
                if users:
                    return users, f"test users of {source} under the run's protocol"
                log.warning("no test users in %s; using synthetic users", source)
        else:
            log.info("run's data %s not found; using synthetic users", source)
    drawn: list[RawFeatures] = list(synthetic_users(encoder, min(n, 256), rng))
    return drawn, "synthetic users drawn from the vocabularies"


def verify_parity(
    model: UserModel,
    onnx_path: Path,
    cases: Sequence[ParityCase],
    tag_embeddings: np.ndarray,
    *,
    atol: float = PARITY_ATOL,
    top_k: int = TOP_K,
    min_agreement: float = MIN_AGREEMENT,
) -> ParityReport:
    """PyTorch vs ONNX Runtime on `cases`; ParityError (naming the worst case) unless parity holds."""
    session = build_session(onnx_path, PARITY_SESSION)
    report = check_parity(
        cases,
        torch_runner(model),
        onnx_runner(session, model.field_names),
        tag_embeddings,
        atol=atol,
        top_k=top_k,
        min_agreement=min_agreement,
    )
    reason = report.failure()
    if reason is not None:
        raise ParityError(f"{onnx_path.name} does not reproduce PyTorch: {reason}")
    return report


def _variant_info(
    variant: str, directory: Path, field_names: Sequence[str], cases: Sequence[ParityCase], tags: np.ndarray, k: int
) -> dict[str, Any]:
    src, dst = directory / ONNX_FILE, directory / variant_file(variant)
    make_variant(variant, src, dst)
    reference = onnx_runner(build_session(src, PARITY_SESSION), field_names)
    candidate = onnx_runner(build_session(dst, PARITY_SESSION), field_names)
    report = check_parity(cases, reference, candidate, tags, top_k=k)
    return {"file": dst.name, "against": "float32 ONNX", **describe_variant(report)}


def _refuse_to_replace_what_is_not_a_bundle(out: Path) -> None:
    """--overwrite replaces a bundle: a folder without a manifest (an --out typed wrong) is never deleted."""
    if out.exists() and not (out / MANIFEST_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"{out} exists and is not a bundle (no {MANIFEST_FILE}): --overwrite only replaces a bundle; "
            "choose another --out"
        )


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to `out` (replacing it when allowed)."""
    if not out.exists():
        tmp.rename(out)
        return
    if not overwrite:
        raise ExportError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def finish_bundle(
    tmp: Path,
    out: Path,
    overwrite: bool,
    *,
    run: Any,
    run_path: Path,
    model_name: str,
    user_dim: int,
    heads: int,
    encoder: FeatureEncoder,
    tag_count: int,
    opset: int,
    dynamic_axes: list[str],
    inputs: list[str],
    outputs: list[str],
    parity: Any,
    users: int,
    source: str,
    **extra: Any,
) -> Manifest:
    """Hash the files written to `tmp`, write its manifest, open it the way the service does, then
    put it in place of `out`. `extra`: the model kind's own manifest fields (variants, scorer)."""
    files = [p.relative_to(tmp).as_posix() for p in sorted(tmp.rglob("*")) if p.is_file()]
    hashes = hash_files(tmp, files)
    manifest = Manifest(
        bundle_version=content_version(hashes),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model={
            "name": model_name,
            "preset_name": run.preset.name,
            "preset": run.preset.to_dict(),
            "loss": run.config.get("loss"),
            "run": str(run_path.resolve()),
            "protocol": run.config.get("protocol"),  # which users were held out: measurements check it
        },
        user_dim=user_dim,
        heads=heads,
        fields=[
            FieldInfo(s.name, s.kind.value, s.max_len, s.vocab_size, f"{ENCODER_DIR}/vocab_{s.name}.json")
            for s in encoder.specs
        ],
        tag_count=tag_count,
        metric=METRIC,
        onnx={
            "file": ONNX_FILE,
            "opset": opset,
            "exporter": "torch.onnx (TorchScript, dynamo=False)",
            "torch": torch.__version__,
            "dynamic_axes": dynamic_axes,
            "inputs": inputs,
            "outputs": outputs,
        },
        parity={"inputs": source, **parity.to_dict()},
        files=hashes,
        heldout_users={"file": HELDOUT_FILE, "count": users, "source": source},
        **extra,
    )
    manifest.write(tmp)
    # The bundle must open the way the service opens it, before it is put in place.
    check_signature(build_session(tmp / ONNX_FILE, PARITY_SESSION), load_bundle(tmp).manifest)
    _swap_into_place(tmp, out, overwrite)
    return manifest


def write_reference(path: Path, model: UserModel, batch: EncodedBatch, n: int = REFERENCE_USERS) -> None:
    """Save the first `n` users' inputs and PyTorch's u for them (`model_export.bundle.verify_onnx`)."""
    sub = slice_batch(batch, 0, min(n, batch.size))
    u = torch_runner(model)(sub)[0]
    arrays: dict[str, Any] = {"u": np.asarray(u, np.float32)}
    arrays.update({f"ids__{f}": sub.ids[f] for f in model.field_names})
    arrays.update({f"mask__{f}": sub.mask[f] for f in model.field_names})
    np.savez(path, **arrays)


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    synthetic_inputs: bool = False,
    opset: int = DEFAULT_OPSET,
    variants: Sequence[str] = (),
    parity_users: int = 1024,
    atol: float = PARITY_ATOL,
    top_k: int = TOP_K,
    min_agreement: float = MIN_AGREEMENT,
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    linear_scorer: bool = True,
) -> Manifest:
    """Export the run at `run_dir` to a bundle directory `out` and return its manifest.

    data: the data set whose test users check parity (default: the run's recorded source, else
    synthetic users); synthetic_inputs forces synthetic users. variants: any of "fp16", "int8".
    parity_users: at most this many held-out users. linear_scorer (utpm-hist): mark a model that is
    exactly b_t + w . phi for the service's linear path (`model_export.scorer`).
    Raises ParityError when ONNX Runtime does not
    reproduce PyTorch (atol on u, min_agreement of same top_k tags), ExportError for other
    failures; in both cases `out` is left as it was.
    """
    from utpm.training.run import load_run

    say = progress or (lambda _msg: None)
    run_path, out = Path(run_dir), Path(out)
    if parity_users < 1:
        raise ExportError(f"parity_users must be >= 1, got {parity_users}")
    for v in variants:
        if v not in VARIANTS:
            raise ExportError(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    _refuse_to_replace_what_is_not_a_bundle(out)
    try:
        run = load_run(run_path)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        raise ExportError(f"cannot load run {run_path}: {e}") from None
    if run.config.get("model") == HISTORY_MODEL:  # the default model: the whole scorer, gated on final scores
        if variants:
            raise ExportError("fp16/int8 variants are not built for utpm-hist bundles yet")
        from model_export.history_export import export_history_bundle

        return export_history_bundle(
            run,
            out,
            data=Path(data) if data is not None else None,
            synthetic_inputs=synthetic_inputs,
            opset=opset,
            parity_users=parity_users,
            atol=atol,
            top_k=top_k,
            min_agreement=min_agreement,
            overwrite=overwrite,
            seed=seed,
            say=say,
            linear_scorer=linear_scorer,
        )
    model, encoder = run.model, run.encoder
    rng = np.random.default_rng(seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        say("copying vocabularies and tag embeddings")
        shutil.copytree(run_path / ENCODER_DIR, tmp / ENCODER_DIR)
        shutil.copy2(run_path / TAGS_FILE, tmp / TAGS_FILE)
        tag_embeddings = model.tag_embedding.weight.detach().numpy().astype(np.float32, copy=True)  # (T, U)
        np.save(tmp / EMBEDDINGS_FILE, tag_embeddings)

        say(f"exporting the user tower to ONNX (opset {opset})")
        export_onnx(model, tmp / ONNX_FILE, opset)

        users, source = heldout_users(
            run.config,
            encoder,
            data=Path(data) if data is not None else None,
            synthetic=synthetic_inputs,
            n=parity_users,
            rng=rng,
        )
        say(f"checking parity on {len(users)} {source}")
        cases = parity_cases(encoder, users, rng)
        report = verify_parity(
            model, tmp / ONNX_FILE, cases, tag_embeddings, atol=atol, top_k=top_k, min_agreement=min_agreement
        )
        np.save(tmp / HELDOUT_FILE, report.outputs["heldout"][0].astype(np.float32))
        write_reference(tmp / REFERENCE_FILE, model, next(c for c in cases if c.name == "heldout").batch)

        variant_infos: dict[str, dict[str, Any]] = {}
        for v in variants:
            say(f"building the {v} variant and measuring its top-{top_k} agreement")
            variant_infos[v] = _variant_info(v, tmp, model.field_names, cases, tag_embeddings, top_k)

        manifest = finish_bundle(
            tmp,
            out,
            overwrite,
            run=run,
            run_path=run_path,
            model_name=model.name,
            user_dim=model.preset.U,
            heads=model.heads,
            encoder=encoder,
            tag_count=len(run.tags),
            opset=opset,
            dynamic_axes=["batch"],
            inputs=input_names(model.specs),
            outputs=output_names(model.specs),
            parity=report,
            users=len(users),
            source=source,
            variants=variant_infos,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
