"""Importing this module imports TensorFlow and Keras without the optional packages they load
eagerly but a TensorFlow training process never uses: ~160 MB less resident memory.

When they are installed (this project's test extras install all three), `import tensorflow`
loads them as a side effect:
    jax         through tf.lite's converter utilities (`tensorflow.lite.python.util`);
    matplotlib  through Keras' image-gallery plotting (`keras.src.visualization`);
    scipy       through the legacy tf.keras engine's sparse-matrix support.
Measured on this project's 2-core machine: the peak RSS of `import tensorflow, keras` is 679 MB
with them and 519 MB without. They are hidden only while TensorFlow and Keras load (each of
those imports is optional there), then importable again: the search pictures import matplotlib
at the end of a run, on the JAX backend nothing is hidden. Import it first among the par_xl
modules, like `train.py` does; it has no effect once TensorFlow is loaded.
"""

import os
import sys

import par_xl.runtime.quiet  # noqa: F401  (its settings must come before TensorFlow's import here)

OPTIONAL = ("jax", "matplotlib", "scipy")


def import_without(names):
    """Imports tensorflow and keras with `names` unimportable meanwhile; returns the names it
    hid (none when TensorFlow is already loaded)."""
    if "tensorflow" in sys.modules:
        return []
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]
    return hidden


if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    import_without(OPTIONAL)
