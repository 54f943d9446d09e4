"""Layer families of the paper's Figure 2; models are thin compositions of these."""

from utpm.models.layers.attention import AttentionFusion, AttentionUnit, masked_softmax
from utpm.models.layers.cross import AFMCross, AutoIntCross, CrossFeature, DCNCross, NFMCross, NoCross
from utpm.models.layers.embedding import FieldEmbedding
from utpm.models.layers.pooling import FusionOutput, MeanPoolingFusion
from utpm.models.layers.tower import Tower, make_activation

__all__ = [
    "AFMCross",
    "AttentionFusion",
    "AttentionUnit",
    "AutoIntCross",
    "CrossFeature",
    "DCNCross",
    "FieldEmbedding",
    "FusionOutput",
    "MeanPoolingFusion",
    "NFMCross",
    "NoCross",
    "Tower",
    "make_activation",
    "masked_softmax",
]
