"""The kNN memory backends by name: the one place that imports every implementation.

The interface (`knn_memory.py`) stands below its backends and imports neither; code that
chooses a backend from a flag (`--knn_backend`) asks here.
"""

from par_xl.memory.exact import ExactKNNMemory
from par_xl.memory.scann_backend import ScannKNNMemory

BACKENDS = ("exact", "scann")


def create_knn_memory(backend, **kwargs):
    """A kNN memory by backend name (`"exact"` or `"scann"`) and its constructor arguments."""
    if backend == "exact":
        return ExactKNNMemory(**kwargs)
    if backend == "scann":
        return ScannKNNMemory(**kwargs)
    raise ValueError(f"backend must be one of {BACKENDS}, received {backend!r}.")
