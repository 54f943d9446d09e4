"""Feature specs, vocabularies and the raw-string -> id encoding shared by training and serving.

Torch-free on purpose: the service imports this package to map request features exactly as
training did.
"""

from utpm.features.encoding import EncodedBatch, FeatureEncoder
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary

__all__ = ["EncodedBatch", "FeatureEncoder", "FieldKind", "FieldSpec", "Vocabulary"]
