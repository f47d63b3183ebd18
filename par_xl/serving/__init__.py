"""Serving a trained model: `TextModel` (a run's model with its tokenizer: text in, text and
scores out) and its export as a SavedModel that runs without par_xl (`saved_model`)."""
