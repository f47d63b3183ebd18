"""kNN memory for memorizing attention: the interface, an exact and a ScaNN backend."""

from par_xl.memory.backends import BACKENDS, create_knn_memory
from par_xl.memory.exact import ExactKNNMemory
from par_xl.memory.exact_state import KNNState
from par_xl.memory.knn_memory import KNNMemory
from par_xl.memory.scann_backend import ScannKNNMemory

__all__ = [
    "BACKENDS",
    "ExactKNNMemory",
    "KNNMemory",
    "KNNState",
    "ScannKNNMemory",
    "create_knn_memory",
]
