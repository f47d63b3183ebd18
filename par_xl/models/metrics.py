"""Corpus-level language-model metrics from per-token negative log-likelihoods."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="par_xl")
class LanguageModelMetrics(keras.metrics.Metric):
    """Perplexity and bits per token over everything seen since the last reset.

    Sums per-token NLL (nats) and counts tokens, so perplexity is `exp(sum NLL / tokens)`,
    the corpus perplexity; the original reported the mean over batches of `exp(batch loss)`,
    which is never smaller and overstates it.

    `result()` is a dict, which Keras flattens into the logs as `perplexity` and
    `bits_per_token`.
    """

    def __init__(self, name="language_model_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, token_nll):
        """Adds a tensor of per-token NLLs, any shape."""
        token_nll = ops.cast(token_nll, "float32")
        self.total.assign_add(ops.sum(token_nll))
        self.count.assign_add(ops.cast(ops.size(token_nll), "float32"))

    def result(self):
        mean = self.total / ops.maximum(self.count, 1.0)
        return {"perplexity": ops.exp(mean), "bits_per_token": mean / math.log(2.0)}

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)
