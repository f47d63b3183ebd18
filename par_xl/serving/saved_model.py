"""The exported SavedModel: text in, text and scores out, run by TensorFlow and tensorflow-text
alone (`tf.saved_model.load`, TF Serving), without par_xl and without Keras's loader.

What it holds
-------------
The weights of a `TextModel` (a run's fixed architecture; a supernet's derived one), its
SentencePiece model for `tensorflow_text.SentencepieceTokenizer` (an op attribute in the graph,
as that tokenizer takes its model, and a copy in `assets/` for callers that tokenize
themselves), and six signatures, traced from the same library code that `generate.py` and
evaluation run (`par_xl.models.generation`, `par_xl.serving.scoring`), so that they give the
same numbers:

- `score(text: string[B])`: `token_log_probs` `[B, L]` (0 past each text's `tokens`),
  `total_log_prob` `[B]`, `tokens`, `words` `[B]` and `bits_per_character` `[B]`, as
  `TextModel.score`.
- `generate(prompt: string[B], max_new_tokens, temperature, top_k, top_p, seed)`: `text`
  `[B]` (the prompt and its continuation, as `generate.py` prints it), `token_ids` and
  `log_probs` `[B, max_new_tokens]`. Prompts of any lengths; the sampling loop with the XL
  memory, kNN stores and recurrent states as its state; row 0 samples what `generate.py`
  samples for the seed.
- `next_token_log_probs(token_ids: int32[B, T], <state>)`: `log_probs` `[B, V]` of the token
  after the T given ones, read one position at a time (as the sampling loop reads), and the
  new state; `initial_state(batch_size)` gives an empty one. The state tensors are named
  `memory_<block>` `[B, M, D]`, `valid_length` `[B]`, and per memorizing block
  `knn_{keys,values}_<block>` `[B, N, C, H]`, `knn_{position,length}_<block>` `[B]`, and per
  block with a recurrent state (LEAP) `recurrent_<field>_<block>` (`LeapState`'s fields).
- `tokenize(text: string[B])`: `token_ids` `[B, L]` (0-padded) and `lengths` `[B]`, as
  `generate` reads a prompt; `detokenize(token_ids, lengths)`: `text`, end-of-line ids as
  newlines.

The model's loops are compiled with XLA (`jit_compile`; TF Serving then needs
`--xla_cpu_compilation_enabled=true`); the tokenizer and the checks stay outside XLA. Every
shape but T (scoring's segment, the chunk a prompt is read in: M) is free: any batch, any
length, one program. `max_new_tokens` is capped at export (`max_new_tokens_limit`): the
sampling loop fills buffers of that length. Bad input fails with an InvalidArgumentError that
names the signature, the argument and what it expects.
"""

import json
import logging
import math
import os
import shutil
from pathlib import Path

import tensorflow as tf
import tensorflow_text as tf_text
from absl import logging as absl_logging

from par_xl.files import temporary_name
from par_xl.memory.exact_state import KNNState
from par_xl.models.compiled import compiled_function
from par_xl.models.generation import (
    check_generates,
    forget_padding,
    read_chunk,
    sampling_loop,
)
from par_xl.models.state import ModelState
from par_xl.serving.scoring import score_step

SIGNATURES = ("score", "generate", "next_token_log_probs", "initial_state", "tokenize",
              "detokenize")  # fmt: skip
EXPORT_INFO = "assets.extra/par_xl_export.json"  # beside the SavedModel, for people and tools


def export_saved_model(text_model, output, max_new_tokens_limit=1024, jit_compile=True):
    """Writes `text_model` as a SavedModel at `output`, under a temporary name renamed when
    complete; returns what `EXPORT_INFO` records (architecture, shapes, limits)."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists: remove it, or choose another output.")
    module = ServingModule(text_model, max_new_tokens_limit, jit_compile)
    info = module.info()
    tmp = temporary_name(output)
    # TensorFlow's INFO lines while saving (each file written, each renamed input of a
    # signature, the fingerprint), through its logger and absl's: warnings only. absl's level
    # is its verbosity flag's (saving sets flags, which resets the logger's own level).
    logger, level = logging.getLogger("tensorflow"), logging.getLogger("tensorflow").level
    verbosity = absl_logging.get_verbosity()
    try:
        logger.setLevel(max(level, logging.WARNING))
        absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        (tmp / EXPORT_INFO).parent.mkdir()
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, output)
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def state_tensors(state):
    """A `ModelState` as the signatures' flat `{name: tensor}` (see the module docstring)."""
    tensors = {f"memory_{name}": memory for name, memory in state.xl_memory.items()}
    tensors["valid_length"] = state.valid_length
    for name, store in state.knn.items():
        tensors.update({f"knn_{field}_{name}": value for field, value in store._asdict().items()})
    for name, recurrent in state.recurrent.items():  # NamedTuples, e.g. LEAP's `LeapState`
        tensors.update({f"recurrent_{field}_{name}": value
                        for field, value in recurrent._asdict().items()})  # fmt: skip
    return tensors


def model_state(model, tensors):
    """The `ModelState` of `state_tensors`' names."""
    return ModelState(
        {name: tensors[f"memory_{name}"] for name in _memory_names(model)},
        tensors["valid_length"],
        {
            name: KNNState(*(tensors[f"knn_{field}_{name}"] for field in KNNState._fields))
            for name in _knn_names(model)
        },
        {
            block.name: type(empty)(*(tensors[f"recurrent_{field}_{block.name}"]
                                      for field in empty._fields))
            for block, empty in _recurrent_blocks(model)
        },  # fmt: skip
    )


def _memory_names(model):
    return [model.blocks[i].name for i in model.memory_blocks] if model.mem_len else []


def _knn_names(model):
    return [model.blocks[i].name for i in model.knn_blocks]


def _recurrent_blocks(model):
    """`(block, its recurrent state in one empty stream)` per block that keeps one."""
    return [(model.blocks[i], model.blocks[i].empty_recurrent_state(1))
            for i in model.recurrent_blocks]  # fmt: skip


def _next_token(model, ids, state):
    """One position through `forward`: `((B, V) log-probs of the next token, state)`."""
    hidden, state = model.forward(ids, state, False)
    return model.log_probs(hidden[:, -1]), state


class ServingModule(tf.Module):
    """The SavedModel's root object: its variables, tokenizer, asset and signatures.

    The Keras model is closed over, not tracked (saving it as an object would try to trace its
    `call`); its weights are tracked in `model_variables`, all but the state variables
    (`call`'s XL memory and kNN stores, which no signature reads).
    """

    def __init__(self, text_model, max_new_tokens_limit, jit_compile):
        super().__init__(name="par_xl")
        model = text_model.model
        check_generates(model)
        if not model.mem_len:
            raise ValueError(
                "the model has no XL memory (mem_len=0): its generation memory follows each "
                "prompt's length, which a SavedModel's fixed program cannot; train with "
                "--mem_len > 0 to export."
            )
        if model.knn_backend != "exact":
            raise ValueError(
                f"knn_backend={model.knn_backend!r}: a SavedModel searches the kNN memory "
                "exactly, inside its graph; load the run with knn_backend='exact'."
            )
        if max_new_tokens_limit < 1:
            raise ValueError(
                f"max_new_tokens_limit must be positive, received {max_new_tokens_limit}."
            )
        state_ids = {id(v) for v in model.state_variables}
        self.model_variables = [v for v in model.variables if id(v) not in state_ids]
        self.sentencepiece_model = tf.saved_model.Asset(str(text_model.sp_model_path))
        self.tokenizer = tf_text.SentencepieceTokenizer(
            model=Path(text_model.sp_model_path).read_bytes()
        )
        self._text_model = text_model
        self._limit = int(max_new_tokens_limit)
        self._jit_compile = bool(jit_compile)
        tokenizer = text_model.tokenizer
        self._eol, self._unknown = tokenizer.eos_id(), tokenizer.unk_id()
        self._words, self._characters = text_model.words, text_model.characters
        empty = model.initial_state(1)
        self._state_specs = {
            name: tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=name)
            for name, value in state_tensors(empty).items()
        }

    @property
    def _model(self):
        return self._text_model.model

    def _compiled(self, function):
        return compiled_function(self._model, function, self._jit_compile)

    def info(self):
        """What the export is: recorded in `EXPORT_INFO`, printed by `export.py`."""
        model = self._model
        return {
            "architecture": model.architecture,
            "derived_from_supernet": self._text_model.supernet_architecture is not None,
            "vocab_size": model.vocab_size,
            "segment_length": self._text_model.segment_length,
            "memory_length": model.mem_len,
            "document_boundaries": model.document_boundaries,
            "max_new_tokens_limit": self._limit,
            "end_of_line_id": self._eol,
            "jit_compile": self._jit_compile,
            "signatures": list(SIGNATURES),
            "state": {name: [None, *spec.shape[1:]] for name, spec in self._state_specs.items()},
        }

    def signatures(self):
        """`{name: concrete function}` for `tf.saved_model.save`, `score` also as
        `serving_default` (TF Serving's). Traced here, once each: the module keeps no
        `tf.function`, which saving would trace again."""

        def spec(name, dtype, shape=()):
            return tf.TensorSpec(shape, dtype, name=name)

        def trace(method, *specs, **named):
            return tf.function(method, autograph=False).get_concrete_function(*specs, **named)

        functions = {
            "score": trace(self.score, spec("text", tf.string, [None])),
            "generate": trace(
                self.generate,
                spec("prompt", tf.string, [None]),
                spec("max_new_tokens", tf.int32),
                spec("temperature", tf.float32),
                spec("top_k", tf.int32),
                spec("top_p", tf.float32),
                spec("seed", tf.int64),
            ),  # fmt: skip
            "next_token_log_probs": trace(
                self.next_token_log_probs,
                spec("token_ids", tf.int32, [None, None]),
                **self._state_specs,
            ),  # fmt: skip
            "initial_state": trace(self.initial_state, spec("batch_size", tf.int32)),
            "tokenize": trace(self.tokenize, spec("text", tf.string, [None])),
            "detokenize": trace(
                self.detokenize,
                spec("token_ids", tf.int32, [None, None]),
                spec("lengths", tf.int32, [None]),
            ),  # fmt: skip
        }
        return {**functions, "serving_default": functions["score"]}

    # The signatures.

    def score(self, text):
        checks = [self._check_strings(text, "score", "text")]
        with tf.control_dependencies(checks):
            lines = self.tokenizer.tokenize(tf.strings.split(text, "\n"))  # (B, lines, pieces)
        eol = tf.fill([lines.values.nrows(), 1], self._eol)
        with_eol = tf.concat([lines.values, tf.RaggedTensor.from_tensor(eol)], axis=1)
        ids = lines.with_values(with_eol).merge_dims(1, 2)  # (B, tokens)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        pieces = tf.cast(lines.merge_dims(1, 2).row_lengths(), tf.int32)  # ends of lines aside
        checks = [self._check_encoded(ids, pieces, "score", "text")]
        segment = self._text_model.segment_length
        width = -(-tf.reduce_max(lengths) // segment) * segment  # whole segments
        labels = ids.to_tensor(0)
        batch = tf.shape(labels)[0]
        labels = tf.pad(labels, [[0, 0], [0, width - tf.shape(labels)[1]]])  # (B, S * T)
        inputs = tf.concat([tf.fill([batch, 1], self._eol), labels[:, :-1]], axis=1)
        starts = tf.one_hot(tf.zeros([batch], tf.int32), width, dtype=tf.int32)

        def segments(x):  # (B, S * T) -> (S, B, T)
            return tf.transpose(tf.reshape(x, [batch, -1, segment]), [1, 0, 2])

        model, step = self._model, self._compiled(score_step)
        document = model.document_boundaries
        chunks = [segments(x) for x in (inputs, labels, starts)]

        def read(i, state, scores):
            ids, targets, marks = (chunk[i] for chunk in chunks)
            log_probs, state = step(ids, targets, marks if document else None, state, {})
            return i + 1, state, scores.write(i, log_probs)

        with tf.control_dependencies(checks):
            scores = tf.TensorArray(tf.float32, size=width // segment)
            _, _, scores = tf.while_loop(
                lambda i, *_: i < width // segment, read, (0, self._empty_state(batch), scores)
            )
        log_probs = tf.reshape(tf.transpose(scores.stack(), [1, 0, 2]), [batch, width])
        valid = tf.sequence_mask(lengths, width)
        log_probs = tf.where(valid, log_probs, 0.0)[:, : tf.reduce_max(lengths)]
        total = tf.reduce_sum(tf.cast(log_probs, tf.float64), axis=1)
        words, characters = (
            tf.reduce_sum(tf.where(valid, tf.gather(tf.constant(table, tf.int32), labels), 0), 1)
            for table in (self._words, self._characters)
        )
        return {
            "token_log_probs": log_probs,
            "total_log_prob": total,
            "tokens": lengths,
            "words": words,
            "bits_per_character": -total / math.log(2.0) / tf.cast(characters, tf.float64),
        }

    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        checks = [
            self._check_strings(prompt, "generate", "prompt"),
            _require(
                (max_new_tokens >= 1) & (max_new_tokens <= self._limit),
                "generate: max_new_tokens must be in [1, {}] (the cap set at export), received {}",
                self._limit,
                max_new_tokens,
            ),  # fmt: skip
            _require(
                temperature > 0,
                "generate: temperature must be positive, received {}",
                temperature,
            ),  # fmt: skip
            _require(
                top_k >= 0, "generate: top_k must be >= 0 (0: all tokens), received {}", top_k
            ),  # fmt: skip
            _require(
                (top_p > 0) & (top_p <= 1), "generate: top_p must be in (0, 1], received {}", top_p
            ),  # fmt: skip
        ]
        with tf.control_dependencies(checks):
            ids = self.tokenizer.tokenize(prompt)  # (B, P)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        with tf.control_dependencies([self._check_encoded(ids, lengths, "generate", "prompt")]):
            token, state = self._read_prompt(ids, lengths)
        seed = tf.cast(seed, tf.uint64)  # modulo 2^64, as `sampling_uniforms.seed_words`
        low = tf.bitwise.bitwise_and(seed, tf.constant(0xFFFFFFFF, tf.uint64))
        high = tf.bitwise.right_shift(seed, tf.constant(32, tf.uint64))
        sampled, log_probs = self._compiled(sampling_loop)(
            token, state, {}, tf.cast(tf.stack([low, high]), tf.uint32), max_new_tokens,
            self._limit,
            temperature, top_k, top_p,
        )  # fmt: skip
        sampled, log_probs = sampled[:, :max_new_tokens], log_probs[:, :max_new_tokens]
        text = self._decode(tf.concat([ids, tf.RaggedTensor.from_tensor(sampled)], axis=1))
        return {"text": text, "token_ids": sampled, "log_probs": log_probs}

    def next_token_log_probs(self, token_ids, **state):
        batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        vocab_size = self._model.vocab_size
        checks = [
            _require(
                length >= 1,
                "next_token_log_probs: token_ids must hold at least one "
                "position, received shape {}",
                tf.shape(token_ids),
            ),  # fmt: skip
            _require(
                tf.reduce_all((token_ids >= 0) & (token_ids < vocab_size)),
                "next_token_log_probs: token_ids must be in [0, {}), received {}",
                vocab_size,
                token_ids,
            ),  # fmt: skip
            *(
                _require(
                    tf.shape(value)[0] == batch,
                    f"next_token_log_probs: {name} must have as many rows as token_ids ({{}}), "
                    "received {} (a state of another batch)",
                    batch,
                    tf.shape(value)[0],
                )  # fmt: skip
                for name, value in state.items()
            ),
        ]
        step = self._compiled(_next_token)

        def read(i, log_probs, state):
            log_probs, state = step(token_ids[:, i][:, None], state)  # (B, 1): a static T
            return i + 1, log_probs, state

        with tf.control_dependencies(checks):
            log_probs = tf.zeros([batch, vocab_size])
            _, log_probs, state = tf.while_loop(
                lambda i, *_: i < length, read, (0, log_probs, model_state(self._model, state))
            )
        return {"log_probs": log_probs, **state_tensors(state)}

    def initial_state(self, batch_size):
        check = _require(
            batch_size >= 1, "initial_state: batch_size must be positive, received {}", batch_size
        )
        with tf.control_dependencies([check]):
            return state_tensors(self._empty_state(batch_size))

    def tokenize(self, text):
        with tf.control_dependencies([self._check_strings(text, "tokenize", "text")]):
            ids = self.tokenizer.tokenize(text)
        return {"token_ids": ids.to_tensor(0), "lengths": tf.cast(ids.row_lengths(), tf.int32)}

    def detokenize(self, token_ids, lengths):
        checks = [
            _require(tf.shape(lengths)[0] == tf.shape(token_ids)[0],
                     "detokenize: lengths must hold one length per row of token_ids ({}), "
                     "received {}", tf.shape(token_ids)[0], tf.shape(lengths)[0]),
            _require(tf.reduce_all((lengths >= 0) & (lengths <= tf.shape(token_ids)[1])),
                     "detokenize: lengths must be in [0, {}], received {}",
                     tf.shape(token_ids)[1], lengths),
        ]  # fmt: skip
        with tf.control_dependencies(checks):
            ids = tf.RaggedTensor.from_tensor(token_ids, lengths=lengths)
        return {"text": self._decode(ids)}

    # Their parts.

    def _empty_state(self, batch_size):
        """The `initial_state` of `batch_size` rows (a tensor): zeros in every field."""
        return model_state(self._model, {
            name: tf.zeros(tf.concat([[batch_size], spec.shape[1:]], 0), spec.dtype)
            for name, spec in self._state_specs.items()
        })  # fmt: skip

    def _read_prompt(self, ids, lengths):
        """`par_xl.models.generation.read_prompt` in the graph: `(B, P)` ragged prompt ids ->
        the `(B,)` last tokens and the `ModelState` after the rest, read in left-padded chunks
        of M, each prompt marked as a document starting after its padding."""
        chunk = self._model.mem_len
        batch, width = tf.shape(lengths)[0], tf.reduce_max(lengths)
        right = width - lengths  # (B,) padding before each prompt
        positions = tf.range(width)[None] - right[:, None]  # (B, P) index into each prompt
        dense = ids.to_tensor(0)
        prompts = tf.where(positions >= 0, tf.gather(dense, tf.maximum(positions, 0),
                                                     batch_dims=1), 0)  # fmt: skip
        context, context_lengths = prompts[:, :-1], lengths - 1
        padding = -(width - 1) % chunk
        context = tf.pad(context, [[0, 0], [padding, 0]])  # whole chunks
        total = width - 1 + padding
        starts = tf.one_hot(total - context_lengths, total, dtype=tf.int32)
        starts *= tf.cast(context_lengths > 0, tf.int32)[:, None]
        chunks = [tf.reshape(x, [batch, -1, chunk]) for x in (context, starts)]
        read = self._compiled(read_chunk)

        def body(i, state):
            return i + 1, read(chunks[0][:, i], chunks[1][:, i], state, {})

        initial = self._empty_state(batch)
        _, state = tf.while_loop(lambda i, _: i < total // chunk, body, (0, initial))
        return prompts[:, -1], forget_padding(state, context_lengths, initial)

    def _decode(self, ids):
        """`(B, L)` ragged ids -> `(B,)` text: `par_xl.data.decode_lines` in the graph (each
        end-of-line id ends a line; the lines decoded apart, joined by newlines)."""
        flat, rows = ids.flat_values, ids.value_rowids()
        is_eol = tf.cast(flat == self._eol, tf.int32)
        before = tf.cumsum(is_eol, exclusive=True)  # end-of-line ids before each id
        row_start = tf.gather(tf.concat([before, [tf.reduce_sum(is_eol)]], 0), ids.row_starts())
        lines_per_row = tf.math.unsorted_segment_sum(is_eol, rows, ids.nrows()) + 1  # (B,)
        first_line = tf.cumsum(lines_per_row, exclusive=True)  # (B,) each row's first line
        line = tf.gather(first_line, rows) + before - tf.gather(row_start, rows)
        keep = flat != self._eol
        lines = tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(flat, keep), tf.boolean_mask(line, keep),
            nrows=tf.reduce_sum(lines_per_row),
        )  # fmt: skip
        text = self.tokenizer.detokenize(tf.RaggedTensor.from_row_lengths(lines, lines_per_row))
        return tf.strings.reduce_join(text, axis=1, separator="\n")

    def _check_strings(self, text, signature, argument):
        """Every string non-empty; the error names the first empty one."""
        empty = tf.strings.length(text) == 0
        return _require(
            ~tf.reduce_any(empty),
            f"{signature}: {argument}[{{}}] is empty: each needs at least one character",
            tf.argmax(tf.cast(empty, tf.int32)),
        )

    def _check_encoded(self, ids, lengths, signature, argument):
        """Every string gave a token (`lengths` `(B,)` of them), none the unknown id (a
        tokenizer without byte fallback)."""
        unknown = tf.reduce_any(tf.equal(ids, self._unknown), axis=1)
        return tf.group(
            _require(
                tf.reduce_all(lengths > 0),
                f"{signature}: {argument}[{{}}] has no token: it holds only spaces",
                tf.argmax(tf.cast(lengths == 0, tf.int32)),
            ),
            _require(
                ~tf.reduce_any(unknown),
                f"{signature}: {argument}[{{}}] holds characters the tokenizer cannot encode "
                "(its SentencePiece model has no byte fallback)",
                tf.argmax(tf.cast(unknown, tf.int32)),
            ),
        )


def _require(condition, template, *values):
    """An assertion whose message is `template` formatted with `values` (`{}` each)."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, values, summarize=8)])
