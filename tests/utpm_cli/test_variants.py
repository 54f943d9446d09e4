"""`--variant key=value,...`: the types a value is read as."""

from __future__ import annotations

from utpm_cli.model import parse_variants


def test_variant_values_are_integers_finite_floats_booleans_or_text() -> None:
    spec = "counts=false,loss=joint,lr=3e-3,keep_epoch_z=1.645,dim=32,max_values=-1,cross=cf,x=nan,y=inf"
    assert parse_variants([spec, "tie=True"]) == [
        (
            ("counts", False),
            ("loss", "joint"),
            ("lr", 0.003),
            ("keep_epoch_z", 1.645),
            ("dim", 32),
            ("max_values", -1),
            ("cross", "cf"),
            ("x", "nan"),  # not a finite number: left as text for the config to refuse by name
            ("y", "inf"),
        ),
        (("tie", True),),
    ]
