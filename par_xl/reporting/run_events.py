"""What a training run logged to TensorBoard, read back: its scalars, step by step.

`TrainingLogger` writes `<run>/train/` (loss, tau, tokens/s, choice probabilities every
`--log_every` steps) and `PeriodicEvaluation` `<run>/validation/` (perplexities at each
evaluation). Reading the events, not the log file, works for any run directory, finished,
resumed or still training: the pictures of the search (`par_xl.reporting.search_picture`) and the
comparison of the main job with the original's table (`benchmarks/main_job.py`) read them here.
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.util import tensor_util


def read_scalars(directory, wanted=lambda tag: True) -> dict[str, dict[int, float]]:
    """`{tag: {step: value}}` of the scalars in `directory`'s event files whose tag is `wanted`,
    steps in increasing order.

    Events are replayed in wall-time order, so a resumed run (a new event file) overrides the
    steps it repeats; and, as in TensorBoard, a tag going back to step s drops the steps >= s
    of the abandoned attempt. Scalars come as TF2 tensors or TF1 `simple_value`s. A truncated
    last record (a file still being written) ends that file's events.
    """
    events = []
    for path in Path(directory).glob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(path)).Load():
            events += [
                (event.wall_time, event.step, v) for v in event.summary.value if wanted(v.tag)
            ]
    scalars = {}
    for _, step, value in sorted(events, key=lambda event: event[0]):
        if value.WhichOneof("value") == "simple_value":
            number = value.simple_value
        else:
            number = tensor_util.make_ndarray(value.tensor).item()
        series = scalars.setdefault(value.tag, {})
        if series and step <= next(reversed(series)):  # steps are kept in increasing order
            series = scalars[value.tag] = {s: v for s, v in series.items() if s < step}
        series[step] = number
    return scalars


def training_seconds(run_dir, tokens_per_step, until=None) -> float:
    """The time a run spent training up to step `until` (default: all it logged), from the
    tokens/s `TrainingLogger` logs for each interval: steps x tokens per step / rate, summed.
    Start-up, epoch-end evaluations and time stopped between a stop and its resume do not
    count; evaluations inside an interval do."""
    rates = read_scalars(Path(run_dir) / "train", lambda tag: tag == "tokens_per_second")
    seconds, previous = 0.0, 0
    for step, rate in rates.get("tokens_per_second", {}).items():
        if until is not None and step > until:
            break
        seconds += (step - previous) * tokens_per_step / rate
        previous = step
    return seconds
