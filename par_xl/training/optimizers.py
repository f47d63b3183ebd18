"""The optimizers `--opt_name` chooses, and a fused Adam for the TensorFlow backend.

Keras's Adam updates each variable with eleven element-wise ops (`update_step`), each a kernel
of its own that reads and writes the whole variable: for the base model's 3 M parameters that
was 17% of the single-path step's kernel time on a 2-core CPU (tf.profiler,
benchmarks/results/original_side_by_side.md).
TensorFlow has the same update as one multithreaded kernel, `ResourceApplyAdam`; `FusedAdam`
calls it and is Keras's Adam otherwise (same arguments, variables, checkpoints and numbers, to
float rounding). Other backends, `amsgrad`, and other dtypes than float32 take Keras's update.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="par_xl")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose per-variable update is TensorFlow's fused `ApplyAdam` kernel.

    The kernel computes exactly Keras's update (Kingma & Ba 2015, with Keras's epsilon):
        m += (g - m) (1 - beta_1);   v += (g^2 - v) (1 - beta_2)
        variable -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)
    A sparse gradient (`tf.IndexedSlices`, the embedding's) is made dense first, as Keras's
    update does when it subtracts the momentum from it.
    """

    def update_step(self, gradient, variable, learning_rate):
        if (
            keras.backend.backend() != "tensorflow"
            or self.amsgrad
            or keras.backend.standardize_dtype(variable.dtype) != "float32"
        ):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        if isinstance(variable, keras.Variable):
            variable = variable.value
        step = ops.cast(self.iterations + 1, "float32")
        beta_1, beta_2 = (ops.cast(beta, "float32") for beta in (self.beta_1, self.beta_2))
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=momentum.value.handle,
            v=velocity.value.handle,
            beta1_power=ops.power(beta_1, step),
            beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, "float32"),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, "float32"),
            grad=tf.convert_to_tensor(ops.cast(gradient, "float32")),
        )


OPTIMIZERS = {
    "adam": FusedAdam,
    "adamw": keras.optimizers.AdamW,
    "lamb": keras.optimizers.Lamb,
    "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
}


def make_optimizer(name, learning_rate):
    """The optimizer `--opt_name=name` (a key of OPTIMIZERS) with `learning_rate` (a float or a
    schedule)."""
    return OPTIMIZERS[name](learning_rate)
