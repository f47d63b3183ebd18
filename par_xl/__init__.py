"""par-xl: Pay Attention when Required Transformer-XL in Keras 3."""

__version__ = "0.1.0"


def load(run, **kwargs):
    """A training run's model with its tokenizer, for text: `model.generate("...")`,
    `model.score("...")` (`par_xl.serving.text_model.TextModel.from_run`, which takes the
    keyword arguments). Imports TensorFlow on first call, not with `par_xl`."""
    from par_xl.serving.text_model import TextModel

    return TextModel.from_run(run, **kwargs)
