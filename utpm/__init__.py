"""utpm: user-tag profiles for recommendation systems (UTPM, CIKM 2020).

Importing this package, `utpm.data` or `utpm.features` never imports torch: the serving path
(`service/`, `index/`, the ONNX side of `model_export/`) relies on that. Only `utpm.models`,
`utpm.training` and `utpm.evaluation.experiment` need the `train` extra.
"""

__version__ = "0.1.0"
