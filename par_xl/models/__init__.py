"""The PAR Transformer-XL model and its recurrent state."""

from par_xl.models.par_transformer_xl import PARTransformerXL
from par_xl.models.state import ModelState

__all__ = ["ModelState", "PARTransformerXL"]
