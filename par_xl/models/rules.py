"""Fixed architectures from published rules, as `--architecture` strings.

    standard            `AFAF...`: Transformer-XL, attention and feed-forward alternating.
    par_rule:p=P        PAR (Mandava et al. 2020, arXiv 2009.04534): round(L / P) attention
                        blocks, evenly spread over the first two-thirds of the L blocks,
                        feed-forward everywhere else (P = 5 was its best for Transformer-XL).
    late_rule:p=P       the control of PAR's rule: as many attention blocks, evenly spread over
                        the last third instead (does the placement matter, or the count?).
    sandwich:k=K        the sandwich transformer (Press, Smith, Levy 2020): L sublayers, L / 2
                        attention and L / 2 feed-forward, ordered K attention, then L / 2 - K
                        pairs `AF`, then K feed-forward.

`expand_architecture` turns a rule into its letters (a plain letter string passes unchanged);
what a run's config.json records is always the letters.
"""

import math

RULES = ("standard", "par_rule", "late_rule", "sandwich")


def standard_architecture(num_layers):
    """`AFAF...` of `num_layers` letters: Transformer-XL's blocks (the search's cost reference)."""
    return ("AF" * num_layers)[:num_layers]


def _spread(count, start, stop):
    """`count` block indices evenly spread over `[start, stop)`: the middle of each of
    `count` equal parts."""
    return {start + math.floor((i + 0.5) * (stop - start) / count) for i in range(count)}


def _parameters(spec, rule, names):
    """`{name: int}` of `rule:name=value,...`; a ValueError names `spec` and what is expected."""
    expected = ",".join(f"{n}=<integer>" for n in names)
    _, _, given = spec.partition(":")
    values = {}
    for item in filter(None, given.split(",")):
        name, _, value = item.partition("=")
        if name not in names or not value.lstrip("-").isdigit():
            break
        values[name] = int(value)
    else:
        if set(values) == set(names):
            return values
    raise ValueError(f"architecture={spec!r}: expected {rule}:{expected}.")


def expand_architecture(spec, num_layers):
    """The letters of `spec` (a rule of the module docstring, or letters) for `num_layers`
    blocks; a ValueError names the rule and what it needs."""
    rule = spec.partition(":")[0]
    if rule not in RULES:
        return spec  # letters, validated with the model's other arguments
    if rule == "standard":
        if spec != "standard":
            raise ValueError(f"architecture={spec!r}: 'standard' takes no parameters.")
        return standard_architecture(num_layers)
    if rule == "sandwich":
        k = _parameters(spec, rule, ("k",))["k"]
        if num_layers % 2:
            raise ValueError(
                f"architecture={spec!r} needs an even --num_layers (as many attention as "
                f"feed-forward sublayers), received {num_layers}."
            )
        half = num_layers // 2
        if not 0 <= k <= half:
            raise ValueError(f"architecture={spec!r}: k must be in [0, {half}], received {k}.")
        return "A" * k + "AF" * (half - k) + "F" * k
    p = _parameters(spec, rule, ("p",))["p"]
    if p < 1:
        raise ValueError(f"architecture={spec!r}: p must be a positive integer, received {p}.")
    count = max(1, round(num_layers / p))
    first_two_thirds = round(2 * num_layers / 3)
    span = (0, first_two_thirds) if rule == "par_rule" else (first_two_thirds, num_layers)
    if count > span[1] - span[0]:
        raise ValueError(
            f"architecture={spec!r}: {count} attention blocks do not fit in blocks "
            f"{span[0]}..{span[1] - 1} of {num_layers}; use a larger p."
        )
    attention = _spread(count, *span)
    return "".join("A" if i in attention else "F" for i in range(num_layers))
