"""The recurrent state a PARTransformerXL carries from one segment to the next.

The state is a `ModelState`: the XL memory, `(B, M, D)` per block that may attend, keyed by
block name, its valid length per row, `(B,)`, and the kNN store (`KNNState`,
`par_xl.memory.exact_state`) of each block that may use memorizing attention ("M",
`knn_layers`): per row and head the keys and values of its last C positions, searched for the k
nearest of each query (Wu et al. 2022, arXiv 2203.08913), and the recurrent state of each block
that may use LEAP attention ("L"): per row and head its focus-weighted sums since the stream's
start (`LeapState`, `par_xl.layers.leap_state`), O(1) in the context's length, or the
block-recurrent cell ("R"): its S state vectors per row (`BlockRecurrentState`,
`par_xl.layers.block_recurrent_state`; Hutchins et al. 2022, arXiv 2203.07852). A block of
sliding-window attention ("W") keeps no state of its own: the keys and values of its window's
last W positions are projections of its XL memory, which it reads like A does. The model's
`forward` is stateless: one segment and a state in, hidden states and the new state out, any
batch size and memory size M. Generation and evaluation carry the state themselves, as tensors
through their compiled loops.

`model.fit` over context-batched data must also give every batch the memory of the previous
one, under `jit_compile=True` and on the JAX backend. For it the state is also kept in
non-trainable variables (`CarriedState`), `memory_<i>` per block in `memory_blocks`,
`valid_memory_length`, the kNN stores' `knn_{keys,values,position,length}_<i>` per block in
`knn_blocks`, and the recurrent states' `recurrent_<field>_<i>` per block in `recurrent_blocks`
(L: `recurrent_{key_sum,value_sum,weight_sum}_<i>`, R: `recurrent_{vectors,length}_<i>`),
created in `build` from the (static) batch size of the data; checkpoints hold them, so a
resumed run continues with the same stores, sums and states. `call` reads them into a
`ModelState`, calls `forward`, and assigns the new state, exactly like a BatchNormalization
layer updates its moving statistics: TensorFlow assigns the variables inside the compiled step,
JAX's stateless training loop returns them as updated non-trainable state. The memory is written
through `stop_gradient`, so it never receives gradients. Other designs fail one of the three
requirements: Python-side caches do not survive `tf.function`/`jax.jit`, and passing the state
as model inputs/outputs does not fit `fit`'s `(inputs, labels)` data contract.

Several devices: each replica of a tf.distribute strategy trains on fixed rows of every batch,
so the state variables are per-stream state kept per replica (`par_xl.distribution.replicas`:
ON_READ variables with no aggregation, built for the replica's rows), never averaged or
broadcast; `get_state` / `set_state` and checkpoints see all B streams, as one device holds
them.

The memory is right-aligned and masked: in an `initial_state` (or after `reset_state()`) no
slot is valid, so the first segment attends to nothing but itself, exactly as with no memory
at all; each segment makes `min(M, seen)` slots valid, counted per row (stream). Memory of
block l is its *input* in the previous segment (Transformer-XL), so only blocks that can
attend keep one.

kNN stores with `knn_backend="scann"`: training searches the exact store above (in the state
variables); evaluation and generation search a `ScannKNNMemory` per block instead
(`inference_state`), an object on the host that is not a tensor: it goes beside the state
(`forward(..., knn_memories=...)`), filled in place, in eager code or a `tf.function` without
XLA.
"""

from typing import NamedTuple

import keras
from keras import ops

from par_xl.distribution import replicas
from par_xl.memory import exact_state
from par_xl.memory.backends import create_knn_memory
from par_xl.memory.exact_state import KNNState


class ModelState(NamedTuple):
    """What `PARTransformerXL.forward` takes and returns besides the segment.

    A NamedTuple of dicts and a tensor: a `tf.nest` structure and a JAX pytree, so it goes
    through `tf.function`, `jax.jit` and `keras.ops.fori_loop` (generation's loop) as it is.

    Attributes:
        xl_memory: `{block name: (B, M, D)}`, one entry per block that keeps XL memory (one
            that may attend, `PARTransformerXL.memory_blocks`): its inputs at the last M
            positions, right-aligned, without gradients; `{}` without memory. Every block has
            the same M.
        valid_length: `(B,)` int32: how many trailing memory slots of each row (stream) hold
            real states; the rest are masked.
        knn: `{block name: KNNState}`, one entry per block that keeps a kNN store (one that
            may use memorizing attention, `PARTransformerXL.knn_blocks`): per row and head the
            keys and values `(B, N, C, H)` of its last C positions, with their ring-buffer
            `position` and valid `length` `(B,)` (`par_xl.memory.exact_state`); `{}` without
            (the default: a state made by hand for a model without kNN memory).
        recurrent: `{block name: state}`, one entry per block that keeps a recurrent state of
            its own (one that may use LEAP attention or the block-recurrent cell,
            `PARTransformerXL.recurrent_blocks`): its letter's state of B rows (L: a float32
            `LeapState`, `par_xl.layers.leap_state`; R: a `BlockRecurrentState`,
            `par_xl.layers.block_recurrent_state`); `{}` without.
    """

    xl_memory: dict
    valid_length: object
    knn: dict = {}  # never mutated: every new state gets a new dict
    recurrent: dict = {}  # the same


class CarriedState:
    """The state variables of a `PARTransformerXL` (the module docstring): made, read, written,
    emptied, saved and loaded.

    A mixin of the model, which provides `blocks`, `memory_blocks`, `knn_blocks`,
    `recurrent_blocks`, `mem_len`, `d_model`, `num_heads`, `knn_memory_size`, `knn_neighbors`,
    `knn_backend` and the dtypes, and holds the variables in `xl_memory` (`{block name: (B, M,
    D)}`), `valid_length` (`(B,)`), `knn_store` (`{block name: KNNState}`) and
    `recurrent_state` (`{block name: LeapState or BlockRecurrentState}`), and
    `inference_state`'s ScaNN stores per
    batch size in `_knn_memories`.
    """

    def _build_state_variables(self, batch):
        """Creates the state variables for `batch` rows (per replica under tf.distribute: see
        `par_xl.distribution.replicas`; an ordinary variable otherwise). Created in this order,
        the checkpoints' (the model's own variables); the kNN stores, then the recurrent
        states last, so that models without them keep the layout they had before these
        existed."""
        self.xl_memory = {
            self.blocks[i].name: replicas.stream_variable(
                f"memory_{i}", (batch, self.mem_len, self.d_model), self.variable_dtype
            )
            for i in (self.memory_blocks if self.mem_len else [])
        }
        self.valid_length = replicas.stream_variable("valid_memory_length", (batch,), "int32")
        self.knn_store = {
            self.blocks[i].name: self._knn_variables(i, batch) for i in self.knn_blocks
        }
        self.recurrent_state = {
            self.blocks[i].name: self._recurrent_variables(i, batch) for i in self.recurrent_blocks
        }

    def _recurrent_variables(self, i, batch):
        """Block i's recurrent state as state variables `recurrent_<field>_<i>`: its empty
        state's structure, shapes and dtypes (`StochasticBlock.empty_recurrent_state`)."""
        empty = self.blocks[i].empty_recurrent_state(batch)
        return type(empty)(
            *(replicas.stream_variable(f"recurrent_{field}_{i}", value.shape,
                                       keras.backend.standardize_dtype(value.dtype))
              for field, value in zip(empty._fields, empty))
        )  # fmt: skip

    def _read_state_variables(self):
        """The state variables as a `ModelState` for `forward`, without gradients."""
        return ModelState(
            {name: ops.stop_gradient(v) for name, v in self.xl_memory.items()},
            self.valid_length,
            {name: KNNState(*map(ops.stop_gradient, s)) for name, s in self.knn_store.items()},
            {name: type(s)(*map(ops.stop_gradient, s)) for name, s in self.recurrent_state.items()},
        )

    def _assign_state_variables(self, state):
        """Writes `forward`'s new `ModelState` into the state variables."""
        for name, variable in self.xl_memory.items():
            variable.assign(ops.cast(state.xl_memory[name], variable.dtype))
        self.valid_length.assign(state.valid_length)
        for name, variables in self.knn_store.items():
            for variable, value in zip(variables, state.knn[name]):
                variable.assign(ops.cast(value, variable.dtype))
        for name, variables in self.recurrent_state.items():
            for variable, value in zip(variables, state.recurrent[name]):
                variable.assign(ops.cast(value, variable.dtype))

    @property
    def keeps_state(self):
        """Whether `call` carries state from batch to batch: an XL memory, a kNN store or a
        recurrent state."""
        return bool(self.mem_len and self.memory_blocks or self.knn_blocks
                    or self.recurrent_blocks)  # fmt: skip

    def _knn_variables(self, i, batch):
        """Block i's kNN store as state variables: a `KNNState` of `knn_keys_<i>`,
        `knn_values_<i>` `(B, N, C, H)` in the compute dtype (what the layer computes in: no
        copy of the store per step), `knn_position_<i>`, `knn_length_<i>` `(B,)`."""
        store = (batch, self.num_heads, self.knn_memory_size, self.d_model // self.num_heads)
        return KNNState(
            *(replicas.stream_variable(f"knn_{name}_{i}", store, self.compute_dtype)
              for name in ("keys", "values")),
            *(replicas.stream_variable(f"knn_{name}_{i}", (batch,), "int32")
              for name in ("position", "length")),
        )  # fmt: skip

    def initial_state(self, batch_size, mem_len=None):
        """The empty state for `forward`: `(B, M, D)` zeros per block in `memory_blocks`
        (none if M is 0), no valid slot, an empty exact kNN store per block in `knn_blocks`
        (`(B, N, C, H)` keys and values in the compute dtype), and an empty recurrent state per
        block in `recurrent_blocks`.

        Args:
            batch_size: B.
            mem_len: M (default: the model's); any M works, as in Transformer-XL evaluation.
        """
        return self._empty_state(batch_size, mem_len, self._knn_sizes(batch_size))

    def inference_state(self, batch_size, mem_len=None):
        """What evaluation and generation start from: `(state, knn_memories)`.

        With `knn_backend="exact"`, `(initial_state(...), {})`. With "scann", the state has no
        kNN stores and `knn_memories` holds a `ScannKNNMemory` per block in `knn_blocks`,
        emptied, for `forward(..., knn_memories=...)`. The model keeps one set per batch size,
        so that a compiled function traces once for them (they are not tensors: they go beside
        the state, searched and filled in place, eager or in a `tf.function` without XLA).
        """
        if self.knn_backend == "exact":
            return self.initial_state(batch_size, mem_len), {}
        if batch_size not in self._knn_memories:
            self._knn_memories[batch_size] = {
                self.blocks[i].name: create_knn_memory(
                    self.knn_backend,
                    **self._knn_sizes(batch_size),
                    num_neighbors=self.knn_neighbors,
                )  # fmt: skip
                for i in self.knn_blocks
            }
        memories = self._knn_memories[batch_size]
        for memory in memories.values():
            memory.clear()
        return self._empty_state(batch_size, mem_len), memories

    def _knn_sizes(self, batch_size):
        """The kNN store's sizes, as `exact_state.empty_state` and `create_knn_memory` take
        them."""
        return dict(
            batch_size=batch_size,
            num_heads=self.num_heads,
            capacity=self.knn_memory_size,
            key_size=self.d_model // self.num_heads,
        )

    def _empty_state(self, batch_size, mem_len=None, knn_sizes=None):
        """An empty `ModelState`, with empty exact kNN stores of `knn_sizes` if given."""
        mem_len = self.mem_len if mem_len is None else mem_len
        shape = (batch_size, mem_len, self.d_model)
        xl_memory = {}
        if mem_len:
            xl_memory = {
                self.blocks[i].name: ops.zeros(shape, self.compute_dtype)
                for i in self.memory_blocks
            }
        knn = {}
        if knn_sizes is not None:
            knn = {
                self.blocks[i].name: exact_state.empty_state(**knn_sizes, dtype=self.compute_dtype)
                for i in self.knn_blocks
            }
        recurrent = {
            self.blocks[i].name: self.blocks[i].empty_recurrent_state(batch_size)
            for i in self.recurrent_blocks
        }
        return ModelState(xl_memory, ops.zeros((batch_size,), "int32"), knn, recurrent)

    @property
    def state_variables(self):
        """The state variables `call` carries: `memory_i` `(B, M, D)` per block in
        `memory_blocks`, `valid_memory_length` `(B,)`, then per block in `knn_blocks` its kNN
        store's `knn_keys_i`, `knn_values_i` `(B, N, C, H)`, `knn_position_i`, `knn_length_i`
        `(B,)`, then per block in `recurrent_blocks` its recurrent state's variables (L:
        `recurrent_key_sum_i`, `recurrent_value_sum_i` `(B, N, H)`, `recurrent_weight_sum_i`
        `(B, N)`; R: `recurrent_vectors_i` `(B, S, D)`, `recurrent_length_i` `(B,)`); empty
        without them. Per replica under tf.distribute (B rows per replica): read and write them
        whole with `get_state` / `set_state`."""
        if self.valid_length is None:
            return []
        stores = [variable for store in self.knn_store.values() for variable in store]
        recurrent = [variable for state in self.recurrent_state.values() for variable in state]
        return [*self.xl_memory.values(), self.valid_length, *stores, *recurrent]

    def reset_state(self):
        """Empties the state variables (start of an epoch, of a new text): the XL memory, the
        kNN stores and the recurrent states."""
        replicas.clear_streams(self.state_variables)

    def get_state(self):
        """The state variables as a `ModelState` of numpy arrays with all streams (`None`
        without them): under tf.distribute the replicas' rows gathered in replica order,
        which is the state one device would hold after the same global batches. A collective
        under a multi-worker strategy (every worker calls it)."""
        if self.valid_length is None:
            return None
        values = replicas.read_streams(self.state_variables)
        memory, valid_length = values[: len(self.xl_memory)], values[len(self.xl_memory)]
        rest = iter(values[len(self.xl_memory) + 1 :])
        knn = {name: KNNState(*(next(rest) for _ in store))
               for name, store in self.knn_store.items()}  # fmt: skip
        recurrent = {name: type(state)(*(next(rest) for _ in state))
                     for name, state in self.recurrent_state.items()}  # fmt: skip
        return ModelState(dict(zip(self.xl_memory, memory)), valid_length, knn, recurrent)

    def set_state(self, state):
        """Assigns a `ModelState` of arrays shaped as `get_state` returns them, all streams;
        each replica takes its rows."""
        memory = [state.xl_memory[name] for name in self.xl_memory]
        stores = [value for name in self.knn_store for value in state.knn[name]]
        recurrent = [value for name in self.recurrent_state for value in state.recurrent[name]]
        replicas.write_streams(self.state_variables,
                               [*memory, state.valid_length, *stores, *recurrent])  # fmt: skip

    def save_own_variables(self, store):
        # Keras's order (its `Layer.save_own_variables`), the state variables written as
        # global arrays (`get_state`): a checkpoint restores under any number of replicas.
        values = replicas.read_streams(self.state_variables)
        state = {id(v): value for v, value in zip(self.state_variables, values)}
        for i, variable in enumerate(self._own_variables()):
            store[f"{i}"] = state.get(id(variable), variable)

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{self.name} has {len(variables)} variables of its own (the state variables), "
                f"the saved weights {len(store.keys())}: another model configuration."
            )
        state = {id(v) for v in self.state_variables}
        for i, variable in enumerate(variables):
            if id(variable) not in state:
                variable.assign(store[f"{i}"])
        index = {id(v): i for i, v in enumerate(variables)}
        values = [store[f"{index[id(v)]}"] for v in self.state_variables]
        replicas.write_streams(self.state_variables, values)

    def _own_variables(self):
        # The variables Keras saves for this layer itself (not its sublayers'), in its order.
        return self._trainable_variables + self._non_trainable_variables
