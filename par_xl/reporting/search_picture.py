"""Pictures of the architecture search: each block's choice probabilities over training.

The history is read back (`par_xl.reporting.run_events`) from the TensorBoard scalars
`TrainingLogger` writes to `<run>/train/` (`choice/block_<i>/<letter>` for the model's choice
letters, `tau`, `loss`), so any run directory can be drawn, finished or still training. Three
pictures: `draw_probabilities_over_steps` (PNG: a panel of one line per choice for each block,
tau and loss below), `draw_search_animation` (GIF: the blocks x choices heat map, step by step) and
`choice_figure` (that heat map as an image array for `tf.summary.image`). Names and colours
come from the choice registry (`par_xl.layers.choices`).

Figures are `matplotlib.figure.Figure`s on an Agg canvas, never pyplot's: nothing needs a
display, and nothing stays in pyplot's figure registry over a long run.
"""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from par_xl.files import atomic_path
from par_xl.layers.choices import CHOICES, in_registry_order
from par_xl.reporting.run_events import read_scalars

CHOICE_TAG = re.compile(r"choice/block_(\d+)/(\w)$")  # block index, letter
COST_TAG = "cost/expected"  # TrainingLogger's expected cost, a multiple of the standard model's


class NoSearchHistory(ValueError):
    """A run directory without the choice-probability scalars of a training run."""


@dataclasses.dataclass(frozen=True)
class SearchHistory:
    """The choice probabilities of a run's L blocks at its S logged steps.

    Attributes:
        steps: `(S,)` int64 global steps, increasing.
        letters: the C choice letters, in registry order, e.g. "AFI".
        probabilities: `(S, L, C)` float32 over `letters` (softmax of the logits; 0 for a
            letter a block does not offer).
        tau: `(S,)` float32 Gumbel temperature (NaN for a fixed architecture).
        loss: `(S,)` float32 training loss (NaN where not logged), or None if never logged.
        cost: `(S,)` float32 expected cost of the architecture, as a multiple of the standard
            Transformer-XL's (`par_xl.cost.objective`; NaN where not logged), or None if never
            logged (runs from before the cost objective).
    """

    steps: np.ndarray
    letters: str
    probabilities: np.ndarray
    tau: np.ndarray
    loss: np.ndarray | None
    cost: np.ndarray | None = None

    @property
    def architecture(self) -> str:
        """The most probable choice of each block at the last step, e.g. "AFAFFI"."""
        return "".join(self.letters[i] for i in self.probabilities[-1].argmax(axis=1))


def read_search_history(run_dir: str | os.PathLike) -> SearchHistory:
    """Reads the choice probabilities, tau and loss a run logged to `<run_dir>/train/`.

    Keeps the steps at which every block's probabilities and tau were all logged (the last one
    may be cut short in a file still being written). Raises `NoSearchHistory` if there are none.
    """
    train = Path(run_dir) / "train"
    scalars = read_scalars(
        train, lambda tag: tag.startswith("choice/") or tag in ("tau", "loss", COST_TAG)
    )
    logged = [CHOICE_TAG.match(tag) for tag in scalars]
    letters = in_registry_order({m[2] for m in logged if m})
    layers = 0
    while letters and f"choice/block_{layers}/{letters[0]}" in scalars:
        layers += 1
    tags = [f"choice/block_{i}/{c}" for i in range(layers) for c in letters] + ["tau"]
    steps = sorted(set.intersection(*(set(scalars.get(tag, ())) for tag in tags)))
    if not layers or not steps:
        raise NoSearchHistory(
            f"{train} holds no architecture search history: expected the TensorBoard scalars "
            f"choice/block_<i>/<letter> (letters of {''.join(CHOICES)}) and tau that train.py "
            "logs every --log_every steps in <run_dir>/train/ (run_dir: "
            "<log_dir>/<model_name>)."
        )
    probabilities = [
        [[scalars[f"choice/block_{i}/{c}"][s] for c in letters] for i in range(layers)]
        for s in steps
    ]
    loss, cost = scalars.get("loss"), scalars.get(COST_TAG)
    return SearchHistory(
        steps=np.array(steps, "int64"),
        letters=letters,
        probabilities=np.array(probabilities, "float32"),
        tau=np.array([scalars["tau"][s] for s in steps], "float32"),
        loss=None if loss is None else np.array([loss.get(s, np.nan) for s in steps], "float32"),
        cost=None if cost is None else np.array([cost.get(s, np.nan) for s in steps], "float32"),
    )


def _figure(width, height):
    """An empty figure of `width` x `height` inches at 100 dpi on its own Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


class _HeatMap:
    """The heat map figure of L blocks' `(L, C)` probabilities over C choice letters: blocks x
    choices, the value in each cell, each block's most probable choice boxed; step, tau and the
    architecture in the title. One figure redrawn per step: the frames of an animation line
    up, and draw faster."""

    def __init__(self, layers, letters):
        self.letters = letters
        self.figure = _figure((110 + 110 * len(letters)) / 100, 1.2 + 0.4 * layers)  # 4.4 for 3
        ax = self.figure.add_subplot()
        self.image = ax.imshow(np.zeros((layers, len(letters))), vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(letters)), [CHOICES[c].name for c in letters])
        ax.set_yticks(range(layers), [f"block_{i}" for i in range(layers)])
        ax.tick_params(length=0)
        self.texts = [
            [ax.text(j, i, "", ha="center", va="center") for j in range(len(letters))]
            for i in range(layers)
        ]
        self.boxes = [
            ax.add_patch(Rectangle((0, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
            for i in range(layers)
        ]
        self.title = ax.set_title(" \n ")
        self.figure.canvas.draw()
        self.figure.set_layout_engine("none")  # keep the first layout for every frame

    def __call__(self, probabilities, step, tau):
        """Draws `(L, C)` probabilities; returns the `(H, W, 3)` uint8 RGB pixels."""
        self.image.set_data(probabilities)
        best = probabilities.argmax(axis=1)
        for i, row in enumerate(probabilities):
            for j, p in enumerate(row):
                self.texts[i][j].set_text(f"{p:.2f}")
                self.texts[i][j].set_color("black" if p > 0.6 else "white")  # on viridis
                self.texts[i][j].set_fontweight("bold" if j == best[i] else "normal")
            self.boxes[i].set_x(best[i] - 0.5)
        architecture = "".join(self.letters[i] for i in best)
        self.title.set_text(
            f"step {step}, tau {tau:.3f}\nchoice probabilities, argmax {architecture}"
        )
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()


def choice_figure(probabilities, letters, step, tau):
    """`(L, C)` choice probabilities over the C choice `letters` (e.g. "AFI") -> `(1, H, W, 3)`
    uint8 image of their labelled heat map, for `tf.summary.image` (H and W in the hundreds
    of pixels)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(letters):
        raise ValueError(
            f"probabilities must be (blocks, {len(letters)}) for the letters {letters!r}, "
            f"received shape {probabilities.shape}."
        )
    return _HeatMap(len(probabilities), letters)(probabilities, step, tau)[None]


def draw_probabilities_over_steps(history: SearchHistory, path: str | os.PathLike) -> None:
    """Writes a PNG to `path` (atomically): per block, each choice's probability over the
    steps; below, tau and the training loss, and the expected cost when it was logged; the
    final architecture in the title."""
    layers = history.probabilities.shape[1]
    columns = min(layers, 3)
    rows = -(-layers // columns)
    with_cost = history.cost is not None
    figure = _figure(4.5 * columns, 2.2 * rows + 2.6 + 2.0 * with_cost)
    grid = figure.add_gridspec(rows + 1 + with_cost, columns)
    first = None
    for layer in range(layers):
        ax = figure.add_subplot(grid[divmod(layer, columns)], sharex=first, sharey=first)
        first = first or ax
        for j, letter in enumerate(history.letters):
            ax.plot(history.steps, history.probabilities[:, layer, j], color=CHOICES[letter].color,
                    label=CHOICES[letter].name)  # fmt: skip
        ax.set_title(f"block_{layer}: {CHOICES[history.architecture[layer]].name}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("probability")
        ax.grid(alpha=0.3)
    below = figure.add_subplot(grid[rows, :], sharex=first)
    lines = below.plot(history.steps, history.tau, color="black", label="tau")
    below.set_ylabel("tau")
    below.set_xlabel("step")
    below.grid(alpha=0.3)
    if history.loss is not None:
        twin = below.twinx()
        lines += twin.plot(history.steps, history.loss, color="tab:red", label="training loss")
        twin.set_ylabel("training loss")
    below.legend(handles=lines, loc="upper right")
    if with_cost:
        cost = figure.add_subplot(grid[rows + 1, :], sharex=first)
        cost.plot(history.steps, history.cost, color="tab:purple")
        cost.axhline(1.0, color="gray", lw=1, ls="--")
        cost.set_ylabel("expected cost\n(x standard)")
        cost.set_xlabel("step")
        cost.grid(alpha=0.3)
    figure.legend(*first.get_legend_handles_labels(), loc="outside lower center",
                  ncols=len(history.letters))  # fmt: skip
    figure.suptitle(
        f"Architecture search: {history.architecture} at step {history.steps[-1]}",
        fontsize="x-large",
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def draw_search_animation(history: SearchHistory, path: str | os.PathLike, frames=100) -> None:
    """Writes an animated GIF to `path` (atomically): the heat map of `choice_figure` at up to
    `frames` logged steps, evenly spread from the first to the last; 10 frames a second, the
    last held 2 s."""
    count = min(frames, len(history.steps))
    # From the last step back, so that a single frame shows the end; distinct as count <= S.
    picked = np.linspace(len(history.steps) - 1, 0, count).round().astype(int)[::-1]
    heat_map = _HeatMap(history.probabilities.shape[1], history.letters)
    pixels = [heat_map(history.probabilities[i], history.steps[i], history.tau[i]) for i in picked]
    # One palette for all frames (quantized as one tall strip): the pixels a frame shares with
    # the one before keep their palette index, and the GIF stores only what changed.
    strip = Image.fromarray(np.concatenate(pixels)).quantize(128, dither=Image.Dither.NONE)
    height = pixels[0].shape[0]
    images = [strip.crop((0, k * height, strip.width, (k + 1) * height)) for k in range(count)]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
            duration=[100] * (count - 1) + [2000],
        )  # fmt: skip


def draw_search(run_dir, output_dir=None, frames: int = 100) -> tuple[Path, Path]:
    """Reads a run's search history and writes `search.png` and `search.gif` in `output_dir`
    (default: the run directory); returns their paths."""
    history = read_search_history(run_dir)
    output = Path(output_dir or run_dir)
    output.mkdir(parents=True, exist_ok=True)
    png, gif = output / "search.png", output / "search.gif"
    draw_probabilities_over_steps(history, png)
    draw_search_animation(history, gif, frames)
    return png, gif
