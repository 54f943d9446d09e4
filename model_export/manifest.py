"""`manifest.json`: what a bundle holds, and its version (a content hash of the files it lists).

A bundle directory:

    manifest.json          this file
    model.onnx             the user tower (inputs `<field>_ids`, `<field>_mask`; outputs `user_embedding`,
                           `attn_<field>`, `attn_merge`)
    model.fp16.onnx        optional variants (opt-in at export), each with its measured top-50 agreement
    model.int8.onnx
    tag_embeddings.npy     (n_tags, U) float32; row i is tag id i; rows 0 and 1 are padding and OOV
    tags.json              the tag vocabulary (id -> tag string)
    encoder/               fields.json + one vocab_<field>.json per input field (raw string -> id)
    heldout_users.npy      (n, U) float32 user embeddings of held-out users, for index recall checks
A bundle of the default model (utpm-hist, `scorer` in the manifest) also holds:
    tag_bias.npy           (n_tags,) float32 b_t; tag_embeddings.npy is then the output table o_t
    heldout_history.npz    the held-out users' history tags and g(phi), for the two-stage recall check
    history_encoder.npz    optional: per-tag arrays the history features need (HistoryEncoder.to_arrays)
and its model.onnx is the whole scorer: inputs `<field>_ids`, `<field>_mask`, `<field>_counts`,
`hist_feats` (B, Hh, P), `hist_mask` (B, Hh); outputs as above plus `history_scores` (B, Hh) = g(phi).

The version is derived from the bytes of every listed file, so two bundles with the same version
hold the same model, vocabularies and embeddings, and anything built from one (an index, a cache)
can say which bundle it belongs to. The manifest itself is not hashed (it records the hash).
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_export.errors import BundleError

FORMAT = "utpm-bundle"
FORMAT_VERSION = 1
METRIC = "inner_product"

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
EMBEDDINGS_FILE = "tag_embeddings.npy"
TAGS_FILE = "tags.json"
ENCODER_DIR = "encoder"
HELDOUT_FILE = "heldout_users.npy"
# A few held-out users' encoded inputs and PyTorch's u for them: lets a loader re-check parity.
REFERENCE_FILE = "parity_reference.npz"
REFERENCE_USERS = 32
RESERVED_TAG_IDS = (0, 1)  # padding, out-of-vocabulary: never a profile's tag

USER_EMBEDDING_OUTPUT = "user_embedding"
HISTORY_SCORES_OUTPUT = "history_scores"
HIST_FEATS_INPUT = "hist_feats"
HIST_MASK_INPUT = "hist_mask"
BIAS_FILE = "tag_bias.npy"
HELDOUT_HISTORY_FILE = "heldout_history.npz"
HISTORY_ARRAYS_FILE = "history_encoder.npz"
MERGE_ATTENTION_OUTPUT = "attn_merge"


def ids_input(field_name: str) -> str:
    """ONNX input name of a field's ids, (B, H_f) int64."""
    return f"{field_name}_ids"


def mask_input(field_name: str) -> str:
    """ONNX input name of a field's mask, (B, H_f) float32."""
    return f"{field_name}_mask"


def counts_input(field_name: str) -> str:
    """ONNX input name of a field's value counts (utpm-hist), (B, H_f) float32."""
    return f"{field_name}_counts"


def attention_output(field_name: str) -> str:
    """ONNX output name of a field's attention weights, (B, heads, H_f)."""
    return f"attn_{field_name}"


def variant_file(variant: str) -> str:
    """File name of an optional ONNX variant, e.g. "fp16" -> "model.fp16.onnx"."""
    return f"model.{variant}.onnx"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (embeddings can be hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path, rel_paths: Iterable[str]) -> dict[str, str]:
    """{relative path: SHA-256} for the given files under `root` (POSIX-style relative paths)."""
    return {rel: file_sha256(root / rel) for rel in sorted(rel_paths)}


def content_version(file_hashes: Mapping[str, str]) -> str:
    """The bundle version: the first 16 hex digits of a SHA-256 over the sorted (path, hash) pairs."""
    h = hashlib.sha256()
    for rel in sorted(file_hashes):
        h.update(f"{rel}\0{file_hashes[rel]}\n".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FieldInfo:
    """One model input field: `kind` "single" | "multi", `max_len` H_f, its vocabulary file."""

    name: str
    kind: str
    max_len: int
    vocab_size: int
    vocab_file: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "max_len": self.max_len,
            "vocab_size": self.vocab_size,
            "vocab_file": self.vocab_file,
        }


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in `path`, or `error` naming the file and what is wrong with it."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise error(f"{path}: expected a JSON object")
    return d


@dataclass
class Manifest:
    """The parsed manifest. `dims`: user (U), heads, fields (M). `files`: {relative path: SHA-256}."""

    bundle_version: str
    created_at: str
    model: dict[str, Any]
    user_dim: int
    heads: int
    fields: list[FieldInfo]
    tag_count: int
    metric: str
    onnx: dict[str, Any]
    parity: dict[str, Any]
    files: dict[str, str]
    heldout_users: dict[str, Any] | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # utpm-hist only: {"kind", "inputs", "outputs", "max_history_tags", "phi_names", files...}; None for
    # the paper's models (a bundle without it is scored by u . t alone)
    scorer: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def input_names(self) -> list[str]:
        """ONNX inputs in order: ids then mask of each field, fields in model order (utpm-hist: as recorded)."""
        if self.scorer is not None:
            return [str(n) for n in self.scorer["inputs"]]
        return [n for f in self.fields for n in (ids_input(f.name), mask_input(f.name))]

    @property
    def output_names(self) -> list[str]:
        if self.scorer is not None:
            return [str(n) for n in self.scorer["outputs"]]
        return [USER_EMBEDDING_OUTPUT, *(attention_output(f.name) for f in self.fields), MERGE_ATTENTION_OUTPUT]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "bundle_version": self.bundle_version,
            "created_at": self.created_at,
            "model": self.model,
            "dims": {"user": self.user_dim, "heads": self.heads, "fields": len(self.fields)},
            "fields": [f.to_dict() for f in self.fields],
            "tags": {
                "count": self.tag_count,
                "vocabulary": TAGS_FILE,
                "embeddings": EMBEDDINGS_FILE,
                "reserved_ids": list(RESERVED_TAG_IDS),
            },
            "metric": self.metric,
            "onnx": self.onnx,
            "heldout_users": self.heldout_users,
            "parity": self.parity,
            "variants": self.variants,
            "files": self.files,
            **({"scorer": self.scorer} if self.scorer is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Parse; BundleError naming the first missing or mistyped key."""
        try:
            if d.get("format") != FORMAT:
                raise BundleError(f"manifest format is {d.get('format')!r}, expected {FORMAT!r}")
            if d.get("format_version") != FORMAT_VERSION:
                raise BundleError(
                    f"manifest format_version {d.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
                )
            dims = d["dims"]
            fields = [
                FieldInfo(
                    name=str(f["name"]),
                    kind=str(f["kind"]),
                    max_len=int(f["max_len"]),
                    vocab_size=int(f["vocab_size"]),
                    vocab_file=str(f["vocab_file"]),
                )
                for f in d["fields"]
            ]
            if int(dims["fields"]) != len(fields):
                raise BundleError(f"manifest dims.fields is {dims['fields']} but it lists {len(fields)} fields")
            files = d["files"]
            if not isinstance(files, dict) or not files:
                raise BundleError("manifest 'files' must be a non-empty mapping of path -> sha256")
            return cls(
                bundle_version=str(d["bundle_version"]),
                created_at=str(d["created_at"]),
                model=dict(d["model"]),
                user_dim=int(dims["user"]),
                heads=int(dims["heads"]),
                fields=fields,
                tag_count=int(d["tags"]["count"]),
                metric=str(d["metric"]),
                onnx=dict(d["onnx"]),
                parity=dict(d["parity"]),
                files={str(k): str(v) for k, v in files.items()},
                heldout_users=dict(d["heldout_users"]) if d.get("heldout_users") else None,
                variants={str(k): dict(v) for k, v in (d.get("variants") or {}).items()},
                scorer=dict(d["scorer"]) if d.get("scorer") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from None

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise BundleError(f"{directory} is not a bundle: no {MANIFEST_FILE}")
        return cls.from_dict(read_json_object(path, BundleError))
