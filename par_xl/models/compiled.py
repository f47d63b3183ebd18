"""Functions of a model compiled once for the backend, reading its current weights.

Generation (`par_xl.models.generation`) and evaluation (`par_xl.training.evaluation`) run
`forward` in loops of their own, carrying a `ModelState` as tensors, outside Keras's
`fit` / `evaluate`; this compiles such a function once per model.
"""

import functools
import weakref

import keras

from par_xl.runtime.native_logs import quiet_native_logs

_compiled = weakref.WeakKeyDictionary()  # model -> {(function, jit_compile): compiled function}


def compiled_function(model, function, jit_compile, static_argnums=()):
    """`function(model, *args)`, compiled for `model` once and kept while the model lives.

    TensorFlow: a `tf.function` (XLA if `jit_compile`), reading the variables in place, without
    AutoGraph (the code is backend-neutral `keras.ops`; converting it costs seconds per trace). JAX:
    `jax.jit` over the variables' current values (`StatelessScope`), so the compiled function
    never holds stale weights; `function` must not assign variables. Other backends run
    eagerly. The arguments at `static_argnums` (of `args`: Python scalars such as sampling
    settings) are static, each new value traced anew (`tf.function` does so by itself). The
    compiled function holds the model weakly, so that the cache never keeps a model alive.
    """
    functions = _compiled.setdefault(model, {})
    key = (function, bool(jit_compile))
    if key in functions:
        return functions[key]
    model_ref = weakref.ref(model)
    # A partial, not a closure: TensorFlow counts the retracing of a closure's code across all
    # its instances (every model's), of a partial per instance.
    bound = functools.partial(_call, function, model_ref)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        quiet_native_logs()  # XLA's C++ "Compiled cluster" line (par_xl.runtime.native_logs)
        compiled = tf.function(bound, jit_compile=jit_compile, autograph=False)
    elif backend == "jax":
        import jax

        def stateless(values, *args):
            variables = model_ref().variables
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return bound(*args)

        jitted = jax.jit(stateless, static_argnums=tuple(i + 1 for i in static_argnums))

        def compiled(*args):
            return jitted([variable.value for variable in model_ref().variables], *args)
    else:
        compiled = bound

    functions[key] = compiled
    return compiled


def _call(function, model_ref, *args):
    return function(model_ref(), *args)
