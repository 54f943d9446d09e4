"""Load and validate a bundle (torch-free): what the service and the index builder open.

`load_bundle` checks, in order: the manifest parses and is this format; the metric is inner
product; every listed file exists and its SHA-256 matches; the version recomputed from those
hashes equals the recorded one; the encoder's fields, the tag vocabulary and the embedding matrix
agree with the manifest's dimensions. Any failure is a `BundleError` naming the file and the two
disagreeing values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.errors import BundleError
from model_export.manifest import (
    EMBEDDINGS_FILE,
    ENCODER_DIR,
    METRIC,
    ONNX_FILE,
    RESERVED_TAG_IDS,
    TAGS_FILE,
    Manifest,
    content_version,
    file_sha256,
)
from utpm.features.encoding import FeatureEncoder
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
    return Bundle(root, manifest, encoder, tags, embeddings, heldout)
