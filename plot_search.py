r"""Draws a training run's architecture search: `search.png` and the animated `search.gif`.

  python plot_search.py --run_dir=runs/par_xl [--output_dir=pictures] [--frames=100]

Works on any run directory of train.py, finished or still training: the pictures are drawn from
the TensorBoard scalars in `<run_dir>/train/`. The work is
`par_xl.reporting.search_picture.draw_search`.
"""

import sys
from pathlib import Path

from absl import app, flags

import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow: quiets its C++ start-up logs)

flags.DEFINE_string("run_dir", None, "Run directory of train.py: <log_dir>/<model_name>.")
flags.DEFINE_string("output_dir", None, "Where to write search.png and search.gif (default: run).")
flags.DEFINE_integer("frames", 100, "Most frames in the GIF; longer histories are subsampled.", 1)
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from par_xl.reporting.search_picture import NoSearchHistory, draw_search

    if not Path(FLAGS.run_dir).is_dir():
        print(f"plot_search.py: error: --run_dir={FLAGS.run_dir} is not a directory; expected a "
              "run directory of train.py (<log_dir>/<model_name>).", file=sys.stderr)  # fmt: skip
        return 2
    try:
        paths = draw_search(FLAGS.run_dir, FLAGS.output_dir, FLAGS.frames)
    except NoSearchHistory as error:
        print(f"plot_search.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file in the way, a read-only or full filesystem
        given = (f"--output_dir={FLAGS.output_dir}" if FLAGS.output_dir
                 else f"--run_dir={FLAGS.run_dir}")  # fmt: skip
        where = f" ({error.filename})" if error.filename else ""
        print(f"plot_search.py: error: {given}: cannot write search.png and search.gif there: "
              f"{error.strerror or error}{where}; expected a writable directory.",
              file=sys.stderr)  # fmt: skip
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    app.run(main)
