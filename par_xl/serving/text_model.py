"""A trained model with its tokenizer: text in, text and scores out, from one line of Python.

    import par_xl
    model = par_xl.load("runs/base")  # or TextModel.from_run("runs/base/checkpoints")
    model.generate("the meaning of life", max_new_tokens=50, temperature=0.8, seed=1)
    model.score("the meaning of life is")  # token log-probs, words, bits per character

In the spirit of keras-hub's `CausalLM.from_preset`: a run directory is the preset. A
supernet is loaded as the architecture it derives (`PARTransformerXL.derive`), the model an
export serves (`par_xl.serving.saved_model`), unless `derive=False`. Generation is
`par_xl.models.generation` (the same tokens as `generate.py` for the same prompt and seed),
scoring `par_xl.serving.scoring` (the log-probabilities evaluation averages).
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

from par_xl.configs import ConfigError
from par_xl.data import decode_lines, load_tokenizer
from par_xl.data.text_units import characters_per_id, words_per_id
from par_xl.data.tokenizer import tokenizer_info
from par_xl.models import generation
from par_xl.serving.scoring import score_ids
from par_xl.training.checkpoints import CONFIG


@dataclasses.dataclass
class TextModel:
    """A `PARTransformerXL` and the SentencePiece model it was trained with.

    Attributes:
        model: the model (a fixed architecture, unless loaded with `derive=False`).
        tokenizer: its `sentencepiece.SentencePieceProcessor`.
        sp_model_path: the SentencePiece `.model` file.
        segment_length: T, tokens per scored segment: the run's `seq_len`.
        supernet_architecture: the architecture a supernet run derived (`model` is it), or
            `None` for a run of a fixed architecture.
    """

    model: object
    tokenizer: object
    sp_model_path: Path
    segment_length: int
    supernet_architecture: str | None = None

    def __post_init__(self):
        self.words = words_per_id(self.tokenizer)
        self.characters = characters_per_id(self.tokenizer)
        self.byte_fallback = tokenizer_info(self.tokenizer).byte_fallback

    @classmethod
    def from_run(cls, run, checkpoint=None, derive=True, knn_backend=None):
        """The model of a training run and its tokenizer.

        Args:
            run: the run directory (`runs/base`) or its checkpoint directory (with
                `config.json`).
            checkpoint: a checkpoint file (default: the newest intact one).
            derive: load a supernet as the fixed architecture it prefers.
            knn_backend: the kNN memory's search, "exact" or "scann" (default: the run's).
        """
        from par_xl.training.runs import check_sp_model, load_run

        directory = checkpoint_directory(run)
        model, _, _, data = load_run(directory, checkpoint, knn_backend=knn_backend)
        path = Path(data["sp_model"])
        check_sp_model(path, data, "the run's SentencePiece model", "the run was trained with")
        architecture = None
        if derive and model.architecture is None:
            model = model.derive()
            architecture = model.architecture
        return cls(model, load_tokenizer(path), path, data["seq_len"], architecture)

    def encode(self, text, name="text"):
        """The SentencePiece ids of `text` (one string), as `generate.py` reads a prompt;
        ValueError for an empty text or one with characters the tokenizer cannot encode."""
        return self._checked(self.tokenizer.encode(_nonempty(text, name)), text, name)

    def generate(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 jit_compile=None):  # fmt: skip
        """Continues `prompt` (a string, or a list of strings of any lengths): the prompt
        followed by `max_new_tokens` sampled tokens, decoded as `generate.py` prints them
        (lowercased if the tokenizer lowercases; end-of-line ids as newlines). Same prompt and
        seed, same text; settings as `par_xl.models.generation.generate`."""
        prompts, names = _strings(prompt, "prompt")
        _validate_sampling(max_new_tokens, temperature, top_k, top_p)
        ids = [self.encode(text, name) for text, name in zip(prompts, names)]
        sampled, _ = generation.generate(
            self.model, ids, max_new_tokens, temperature, top_k, top_p, seed,
            jit_compile=jit_compile,
        )  # fmt: skip
        texts = [decode_lines(self.tokenizer, [*p, *new.tolist()]) for p, new in zip(ids, sampled)]
        return texts[0] if isinstance(prompt, str) else texts

    def score(self, text, jit_compile=None):
        """How likely the model finds `text` (a string, or a list of strings).

        Returns a dict (a list of them for a list): `token_log_probs` (float32, one per token
        of the text's lines, each line's end-of-line id included), `total_log_prob` (nats),
        `tokens`, `words` (WikiText's count: words plus one per line) and
        `bits_per_character` (`par_xl.data.text_units`).
        """
        texts, names = _strings(text, "text")
        eol = self.tokenizer.eos_id()
        streams = []
        for string, name in zip(texts, names):
            lines = self.tokenizer.encode(_nonempty(string, name).split("\n"))
            self._checked([i for line in lines for i in line], string, name)  # the pieces
            streams.append([i for line in lines for i in [*line, eol]])
        scores = score_ids(self.model, streams, self.segment_length, eol, jit_compile)
        results = [self._summary(ids, log_probs) for ids, log_probs in zip(streams, scores)]
        return results[0] if isinstance(text, str) else results

    def _summary(self, ids, log_probs):
        total = float(np.sum(log_probs, dtype="float64"))
        characters = int(self.characters[ids].sum())
        return {
            "token_log_probs": log_probs,
            "total_log_prob": total,
            "tokens": len(ids),
            "words": int(self.words[ids].sum()),
            "bits_per_character": -total / math.log(2.0) / characters,
        }

    def _checked(self, ids, text, name):
        """`ids`, unless empty or holding the unknown id (a tokenizer without byte fallback
        meeting a character it never saw): a ValueError naming `name` then."""
        if not len(ids):
            raise ValueError(f"{name} has no token: {text!r:.80} holds only spaces.")
        unknown = self.tokenizer.unk_id()
        if unknown in ids:
            unseen = "".join(sorted({c for c in text if unknown in self.tokenizer.encode(c)}))
            raise ValueError(
                f"{name} holds characters the tokenizer cannot encode ({unseen!r}): its "
                "SentencePiece model has no byte fallback; remove them, or train the tokenizer "
                "with byte fallback (build_data.py's default)."
            )
        return list(ids)


def checkpoint_directory(run):
    """`run` if it holds `config.json`, else `run/checkpoints`; ConfigError naming `run`
    when neither does."""
    for directory in (Path(run), Path(run) / "checkpoints"):
        if (directory / CONFIG).is_file():
            return directory
    raise ConfigError(
        f"{run} is not a training run: neither it nor {Path(run) / 'checkpoints'} holds {CONFIG}."
    )


def _strings(values, name):
    """`(strings, their names in messages)` of a string or a list of strings, else a
    ValueError naming `name`."""
    if isinstance(values, str):
        return [values], [name]
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a string or a list of strings, received {values!r:.80}.")
    if not values:
        raise ValueError(f"{name} must hold at least one string, received an empty list.")
    return list(values), [f"{name}[{i}]" for i in range(len(values))]


def _validate_sampling(max_new_tokens, temperature, top_k, top_p):
    """`generation.validate_sampling`, its count named as `generate` names it."""
    try:
        generation.validate_sampling(max_new_tokens, temperature, top_k, top_p)
    except ValueError as error:
        raise ValueError(str(error).replace("num_tokens", "max_new_tokens", 1)) from None


def _nonempty(text, name):
    if not text:
        raise ValueError(f"{name} is empty: it needs at least one character.")
    return text
