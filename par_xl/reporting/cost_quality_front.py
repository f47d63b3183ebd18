"""The cost-quality front of several models: speed (tokens/s, higher is better) against
perplexity (lower is better), one point per model.

A model dominates another when it is at least as fast and at least as good, and strictly one
of the two; the front of a set of models is those that no other model of the set dominates (a
staircase: each faster model on it is worse). A model sits on or above a front when no model
of that front dominates it. The figure is a `matplotlib.figure.Figure` on an Agg canvas, as the
search pictures (`par_xl.reporting.search_picture`).
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from par_xl.files import atomic_path


def dominates(a, b):
    """Whether the point `a` = (speed, perplexity) dominates `b` (module docstring)."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def dominated_by(point, points):
    """The names of `points` (`{name: (speed, perplexity)}`) that dominate `point`."""
    return sorted(name for name, other in points.items() if dominates(other, point))


def front(points):
    """The names of `points` (`{name: (speed, perplexity)}`) on their front, fastest first."""
    names = [name for name, p in points.items() if not dominated_by(p, points)]
    return sorted(names, key=lambda name: -points[name][0])


def draw_front(groups, path, references=(), goal=None, xlabel="tokens/s",
               ylabel="perplexity", title=None):  # fmt: skip
    """Writes a PNG to `path` (atomically): each group's points, and the first group's front
    as a staircase (the edge of what its models dominate), speed on a log axis.

    Args:
        groups: `{label: {name: (speed, perplexity)}}`, one marker style per group; each point
            is annotated with its name.
        references: names of `groups`' points that `goal` is measured against.
        goal: `(speed factor, perplexity factor)`: for each reference, the region at least
            `speed factor` x its speed and at most `perplexity factor` x its perplexity is
            shaded, in a colour of its own.
    """
    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = ("o", "*", "s", "^", "D")
    everything = {name: p for points in groups.values() for name, p in points.items()}
    for i, ((label, points), marker) in enumerate(zip(groups.items(), markers)):
        if not points:
            continue
        xs, ys = zip(*points.values())
        dots = axes.scatter(xs, ys, marker=marker, s=90 if marker == "*" else 40, label=label)
        steps = [points[name] for name in front(points)][::-1]  # slowest first
        if i == 0 and len(steps) > 1:  # up at each point, then across to the next
            axes.step(*zip(*steps), where="pre", color=dots.get_facecolor()[0], alpha=0.6,
                      label=f"{label}: front")  # fmt: skip
    # Labels above and below in turn along the speed axis, so that neighbours do not overlap.
    for i, (name, (x, y)) in enumerate(sorted(everything.items(), key=lambda item: item[1])):
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5 if i % 2 else -11),
                      fontsize="small")  # fmt: skip
    present = [name for name in references if name in everything] if goal else []
    for reference, colour in zip(present, ("tab:green", "tab:purple", "tab:olive")):
        x, y = everything[reference]
        right = max(p[0] for p in everything.values())
        bottom = min(p[1] for p in everything.values())
        axes.fill_between([goal[0] * x, max(right, goal[0] * x) * 1.05], min(bottom, y) * 0.98,
                          goal[1] * y, color=colour, alpha=0.15,
                          label=f"goal: >= {goal[0]:g}x {reference}'s speed, "
                          f"<= {goal[1]:g}x its perplexity")  # fmt: skip
    axes.set_xscale("log")  # speed-ups as distances: 1.3x is as wide anywhere
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
