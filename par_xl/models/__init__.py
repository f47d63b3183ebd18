"""The PAR Transformer-XL model."""

from par_xl.models.par_transformer_xl import PARTransformerXL

__all__ = ["PARTransformerXL"]
