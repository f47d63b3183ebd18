"""A cost term for the architecture search: the expected cost of the sampled architecture.

Each block choice has a cost per block: its inference FLOPs per token from the choice registry
(`--cost=flops`, `flops_costs`), or its forward latency measured on the target device
(`--cost=latency`, a table from `latency_table.py`, `par_xl.cost.latency`). So has the rest of
the model, which every architecture pays (the output layer's FLOPs; the embedding, output layer
and framework time of a forward pass). The expected cost of a supernet is differentiable in the
choice logits (FBNet, ProxylessNAS):

    E[cost] = fixed + sum over blocks b, letters c of softmax(logits_b)_c * cost_c

(a fixed block adds its own letter's cost). With a target T (`--cost_target`, a fraction of the
whole standard Transformer-XL of the same depth, `AFAF...`, its fixed part included, so that a
target of 0.8 asks for a model that runs in 0.8 of the standard's time, not blocks that do) and
a weight w (`--cost_weight`) the loss becomes, for the cross-entropy CE:

    additive        CE + w (E[cost] - T) / T          (ProxylessNAS, its lambda = w)
    multiplicative  CE * (E[cost] / T) ** w           (FBNet's and MnasNet's form: in logs,
                                                       log CE + w log(E[cost] / T))
    hinge           CE + w max(E[cost] - T, 0) / T    (MnasNet's hard constraint: no pressure
                                                       once the cost is at or below T)

The additive and hinge terms' gradients reach only the logits; the multiplicative one also
rescales the weights' gradient by (E/T)^w, close to 1 near the target. All push the cost down
with a strength w that does not depend on the cost's unit; additive and multiplicative never
stop (T sets the scale), hinge stops at T, so that it is the one that targets a cost.
"""

import dataclasses

import numpy as np
from keras import ops

from par_xl.cost.flops import output_flops_per_token
from par_xl.layers.choices import CHOICES
from par_xl.models.rules import standard_architecture

COSTS = ("none", "flops", "latency")
FORMS = ("additive", "multiplicative", "hinge")
REFERENCE = standard_architecture(2)  # the letters of the standard model, the cost reference


def flops_costs(model, segment_length, mem_len, batch_size):
    """`({letter: forward FLOPs per token}, fixed)`: of one block with each letter the model's
    blocks offer, and of A and F (the reference), at `(B, T)` batches over M memory positions;
    and of the output layer, which every architecture pays."""
    costs = {}
    for block in model.blocks:
        for letter in {*block.offered, *REFERENCE}:
            if letter not in costs:
                macs = CHOICES[letter].macs_per_token(block, segment_length, mem_len, batch_size,
                                                      True)  # fmt: skip
                costs[letter] = 2.0 * macs
    return costs, output_flops_per_token(model, segment_length, batch_size)


@dataclasses.dataclass(frozen=True)
class CostObjective:
    """The cost term of the search loss (module docstring).

    Attributes:
        costs: `{letter: cost of one block with it}`, covering every letter a block offers
            and the reference's A and F.
        weight: w, >= 0 (0: the cost is only measured, as the logs do without --cost).
        target_fraction: T as a fraction of `standard_architecture`'s cost, > 0.
        form: "additive", "multiplicative" or "hinge".
        unit: what a cost counts ("FLOPs per token", "ms per batch"), for logs.
        fixed: the cost of the rest of the model, which every architecture pays, >= 0.
    """

    costs: dict
    weight: float
    target_fraction: float
    form: str = "additive"
    unit: str = ""
    fixed: float = 0.0

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, received {self.form!r}.")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a number >= 0, received {self.weight!r}.")
        if not (np.isfinite(self.target_fraction) and self.target_fraction > 0):
            raise ValueError(
                f"target_fraction must be a positive number, received {self.target_fraction!r}."
            )
        for letter, cost in {**self.costs, "the rest of the model": self.fixed}.items():
            if not (np.isfinite(cost) and cost >= 0):
                raise ValueError(f"the cost of {letter!r} must be >= 0, received {cost!r}.")

    def architecture_cost(self, architecture):
        """The cost of the model with a fixed architecture string, e.g. `"AFAFAF"`."""
        missing = sorted(set(architecture) - set(self.costs))
        if missing:
            raise ValueError(f"no cost for the letters {missing} (costs of {sorted(self.costs)}).")
        return self.fixed + float(sum(self.costs[letter] for letter in architecture))

    def target(self, num_layers):
        """T: `target_fraction` of the standard architecture's cost."""
        return self.target_fraction * self.architecture_cost(standard_architecture(num_layers))

    def within_target(self, model, resolution=100_000):
        """The most probable architecture of the supernet `model` whose cost is at most the
        target: the letters maximizing the sum over blocks of log P(letter), subject to
        `architecture_cost <= target` (a multiple-choice knapsack, solved by dynamic
        programming over the blocks' costs rounded up to 1/`resolution` of the budget, so an
        architecture within L/`resolution` of the target, for L blocks, may be left out).
        The argmax can cost far more or less than the expectation that the loss holds at the
        target (probability spread over letters that win no block); this is the architecture
        the target asks for. None when even the cheapest architecture costs more.
        """
        probabilities, argmax = model.choice_probabilities()
        letters = model.choice_letters
        target = self.target(len(model.blocks))
        if self.architecture_cost(argmax) <= target:
            return argmax
        offered = [block.choices if block.choice is None else (block.choice,)
                   for block in model.blocks]  # fmt: skip
        budget = target - self.fixed
        cheapest = sum(min(self.costs[c] for c in choices) for choices in offered)
        if cheapest > budget:
            return None
        unit = max(budget, 1e-12) / resolution
        width = {c: int(np.ceil(cost / unit - 1e-9)) for c, cost in self.costs.items()}
        best = np.zeros(resolution + 1)  # best[n]: the highest score of blocks so far in n units
        picks = []
        for row, choices in zip(probabilities, offered):
            step = np.full(resolution + 1, -np.inf)
            pick = np.zeros(resolution + 1, "int8")
            for i, letter in enumerate(choices):
                if width[letter] > resolution:
                    continue
                score = np.log(max(float(row[letters.index(letter)]), 1e-30))
                candidate = np.full(resolution + 1, -np.inf)
                candidate[width[letter]:] = best[: resolution + 1 - width[letter]] + score
                better = candidate > step
                step[better], pick[better] = candidate[better], i
            best = step
            picks.append(pick)
        n = int(np.argmax(best))
        if not np.isfinite(best[n]):
            return None  # only architectures the rounding put over the budget remain
        chosen = []
        for pick, choices in zip(picks[::-1], offered[::-1]):
            letter = choices[pick[n]]
            chosen.append(letter)
            n -= width[letter]
        return "".join(chosen[::-1])

    def expected_cost(self, model):
        """E[cost] of the model under its choice probabilities: a float32 scalar tensor,
        differentiable in the choice logits."""
        missing = sorted({c for b in model.blocks for c in b.offered} - set(self.costs))
        if missing:
            raise ValueError(f"no cost for the letters {missing} (costs of {sorted(self.costs)}).")
        total = ops.convert_to_tensor(self.fixed, "float32")
        for block in model.blocks:
            if block.choice is not None:
                total = total + self.costs[block.choice]
            else:
                costs = ops.convert_to_tensor([self.costs[c] for c in block.choices], "float32")
                total = total + ops.sum(block.gumbel.probabilities() * costs)
        return total

    def loss(self, cross_entropy, expected_cost, num_layers):
        """The search loss from the mean cross-entropy and `expected_cost`."""
        cross_entropy = ops.cast(cross_entropy, "float32")
        ratio = expected_cost / self.target(num_layers)
        if self.form == "additive":
            return cross_entropy + self.weight * (ratio - 1.0)
        if self.form == "hinge":
            return cross_entropy + self.weight * ops.maximum(ratio - 1.0, 0.0)
        return cross_entropy * ops.power(ratio, self.weight)
