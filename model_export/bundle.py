"""Load and validate a bundle (torch-free): what the service and the index builder open.

`load_bundle` checks, in order: the manifest parses and is this format; the metric is inner
product; every listed file exists and its SHA-256 matches; the version recomputed from those
hashes equals the recorded one; the encoder's fields, the tag vocabulary and the embedding matrix
agree with the manifest's dimensions. Any failure is a `BundleError` naming the file and the two
disagreeing values.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.errors import BundleError
from model_export.manifest import (
    BIAS_FILE,
    EMBEDDINGS_FILE,
    ENCODER_DIR,
    HISTORY_ARRAYS_FILE,
    METRIC,
    ONNX_FILE,
    RESERVED_TAG_IDS,
    TAGS_FILE,
    Manifest,
    content_version,
    file_sha256,
)
from utpm.features.encoding import FeatureEncoder
from utpm.features.history import PHI_NAMES, HistoryEncoder
from utpm.features.vocab import Vocabulary


@dataclass(frozen=True)
class Bundle:
    """An opened bundle.

    embeddings: (n_tags, U) float32, memory-mapped read-only; row i is tag id i, rows 0 and 1
    (padding, OOV) are never returned as profile tags. heldout_users: (n, U) float32 or None.
    """

    path: Path
    manifest: Manifest
    encoder: FeatureEncoder
    tags: Vocabulary
    embeddings: np.ndarray
    heldout_users: np.ndarray | None
    # utpm-hist: b_t (n_tags,) float32, memory-mapped; None for the paper's models (no bias)
    tag_bias: np.ndarray | None = None

    @property
    def has_history(self) -> bool:
        """True for the default model's bundle: scores are u . o_t + b_t + g(phi) (two-stage search)."""
        return self.manifest.scorer is not None

    @property
    def index_dim(self) -> int:
        """Dimension of the vectors the tag index holds: U, or U + 1 with the bias folded in ([o_t, b_t])."""
        return self.dim + (1 if self.tag_bias is not None else 0)

    @property
    def linear_phi_weights(self) -> np.ndarray | None:
        """w (P,) when the scorer is exactly b_t + w . phi (`model_export.scorer`), None otherwise."""
        w = (self.manifest.scorer or {}).get("linear_phi_weights")
        return None if w is None else np.asarray(w, np.float32)

    def index_table(self) -> np.ndarray:
        """(n_tags, index_dim) float32 in memory: o_t, or [o_t, b_t] so that [u, 1] . [o_t, b_t] = u . o_t + b_t."""
        x = np.asarray(self.embeddings, dtype=np.float32)
        if self.tag_bias is None:
            return np.ascontiguousarray(x)
        return np.ascontiguousarray(np.hstack([x, np.asarray(self.tag_bias, np.float32)[:, None]]))

    def index_queries(self, u: np.ndarray) -> np.ndarray:
        """User vectors (B, U) as index queries: [u, 1] when the bias is folded in."""
        u = np.asarray(u, dtype=np.float32)
        if self.tag_bias is None:
            return np.ascontiguousarray(u)
        return np.ascontiguousarray(np.hstack([u, np.ones((len(u), 1), np.float32)]))

    def history_encoder(self) -> HistoryEncoder:
        """The features of the history path, as training computed them (utpm-hist bundles only)."""
        if self.manifest.scorer is None:
            raise BundleError(f"bundle {self.path} is not a utpm-hist bundle: it has no history path")
        return load_history_encoder(self.path, self.encoder, self.tags, self.manifest.scorer)

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @property
    def dim(self) -> int:
        """U, the dimension of user and tag embeddings."""
        return self.manifest.user_dim

    @property
    def metric(self) -> str:
        return self.manifest.metric

    @property
    def onnx_path(self) -> Path:
        return self.path / str(self.manifest.onnx.get("file", ONNX_FILE))

    @property
    def reserved_tag_ids(self) -> tuple[int, ...]:
        return RESERVED_TAG_IDS

    def variant_path(self, variant: str) -> Path:
        """Path of an optional ONNX variant ("fp16", "int8"); BundleError if it was not exported."""
        if variant == "fp32":
            return self.onnx_path
        info = self.manifest.variants.get(variant)
        if info is None:
            raise BundleError(f"bundle {self.path} has no {variant!r} variant; it has {sorted(self.manifest.variants)}")
        return self.path / str(info["file"])


def load_history_encoder(
    root: Path, encoder: FeatureEncoder, tags: Vocabulary, scorer: dict[str, object]
) -> HistoryEncoder:
    """HistoryEncoder of a run or bundle directory: the vocabularies, the settings in `scorer`, and
    whatever per-tag arrays it exported (`HistoryEncoder.to_arrays` -> history_encoder.npz, read back by
    `HistoryEncoder.from_arrays(encoder, tags, max_history_tags, arrays)`), so new features need no
    serving change."""
    max_tags = int(scorer.get("max_history_tags", 1000))  # type: ignore[call-overload]
    n_phi = _phi_width(root, scorer.get("phi_names"))
    arrays_file = root / HISTORY_ARRAYS_FILE
    if arrays_file.is_file():
        try:
            with np.load(arrays_file, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BundleError(f"{arrays_file}: not a readable .npz of arrays ({e})") from None
        return HistoryEncoder.from_arrays(encoder, tags, max_tags, arrays, n_phi)
    return HistoryEncoder(encoder, tags, max_tags, n_phi=n_phi)


def _phi_width(root: Path, names: object) -> int:
    """How many phi features a bundle's graph reads: its `phi_names`, which must be the first of
    today's `PHI_NAMES` (features are only ever appended); all of them for a run directory."""
    if names is None:
        return len(PHI_NAMES)
    if not isinstance(names, list) or not names or list(PHI_NAMES[: len(names)]) != names:
        raise BundleError(
            f"{root}: its history features {names} are not the first of this version's {list(PHI_NAMES)}; "
            "re-export it with this version"
        )
    return len(names)


def _verify_files(root: Path, manifest: Manifest, verify_hashes: bool) -> None:
    for rel, expected in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
        if verify_hashes:
            actual = file_sha256(p)
            if actual != expected:
                raise BundleError(
                    f"{p}: content hash {actual[:12]}... does not match the manifest's {expected[:12]}..."
                )
    version = content_version(manifest.files)
    if version != manifest.bundle_version:
        raise BundleError(
            f"{root}: manifest bundle_version {manifest.bundle_version} does not match its file hashes ({version})"
        )


def _check_encoder(root: Path, manifest: Manifest, encoder: FeatureEncoder) -> None:
    if encoder.field_names != manifest.field_names:
        raise BundleError(
            f"{root / ENCODER_DIR}: fields {encoder.field_names} != manifest fields {manifest.field_names}"
        )
    for info in manifest.fields:
        spec = encoder.spec(info.name)
        if (spec.kind.value, spec.max_len, spec.vocab_size) != (info.kind, info.max_len, info.vocab_size):
            raise BundleError(
                f"field {info.name!r}: encoder has kind={spec.kind.value}, max_len={spec.max_len}, "
                f"vocab_size={spec.vocab_size}; manifest says kind={info.kind}, max_len={info.max_len}, "
                f"vocab_size={info.vocab_size}"
            )


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Open the bundle at `path` and validate it (see the module docstring).

    verify_hashes=False skips re-hashing the files (the version is still recomputed from the
    manifest's hashes): for a fast start when the bundle was verified when it was deployed.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a directory")
    manifest = Manifest.read(root)
    if manifest.metric != METRIC:
        raise BundleError(f"{root}: metric is {manifest.metric!r}; this project scores by {METRIC!r} only")
    _verify_files(root, manifest, verify_hashes)
    try:
        encoder = FeatureEncoder.load(root / ENCODER_DIR)
        tags = Vocabulary.load(root / TAGS_FILE)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{root}: cannot read the vocabularies: {type(e).__name__}: {e}") from None
    _check_encoder(root, manifest, encoder)
    if len(tags) != manifest.tag_count:
        raise BundleError(f"{root / TAGS_FILE}: {len(tags)} tags, manifest says {manifest.tag_count}")
    try:
        embeddings = np.load(root / EMBEDDINGS_FILE, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise BundleError(f"{root / EMBEDDINGS_FILE}: cannot read: {e}") from None
    expected = (manifest.tag_count, manifest.user_dim)
    if embeddings.dtype != np.float32 or embeddings.shape != expected:
        raise BundleError(
            f"{root / EMBEDDINGS_FILE}: {embeddings.dtype} {embeddings.shape}, expected float32 {expected}"
        )
    heldout = None
    if manifest.heldout_users is not None:
        heldout = np.load(root / str(manifest.heldout_users["file"]), mmap_mode="r")
        if heldout.ndim != 2 or heldout.shape[1] != manifest.user_dim or heldout.dtype != np.float32:
            raise BundleError(
                f"{root}: held-out user embeddings are {heldout.dtype} {heldout.shape}, "
                f"expected float32 (n, {manifest.user_dim})"
            )
    bias = None
    if manifest.scorer is not None:
        bias_file = str(manifest.scorer.get("bias_file", BIAS_FILE))
        try:
            bias = np.load(root / bias_file, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BundleError(f"{root / bias_file}: cannot read: {e}") from None
        if bias.dtype != np.float32 or bias.shape != (manifest.tag_count,):
            raise BundleError(
                f"{root / bias_file}: {bias.dtype} {bias.shape}, expected float32 ({manifest.tag_count},)"
            )
    return Bundle(root, manifest, encoder, tags, embeddings, heldout, bias)
