"""Log files for the length of a job (a build, a training run), and the metric lines in them."""

import contextlib
import logging
import sys

from par_xl.files import reporting_full_disk


class _StrictFileHandler(logging.FileHandler):
    """A FileHandler that stops the job when its file cannot be written.

    `logging` prints a traceback for a failed write ("--- Logging error ---") and goes on, so a
    full disk would fill the output with tracebacks while training continues without a log.
    Here the first failed write raises (`DiskFull` for a full disk, else the OSError) from the
    logging call, and the handler stays silent afterwards, so reporting the failure can log.
    """

    def __init__(self, path):
        super().__init__(path, encoding="utf-8")
        self.failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        self.failed = True
        with reporting_full_disk(self.baseFilename, advice="then run the job again"):
            raise error


@contextlib.contextmanager
def log_to_file(path, logger_name, formatter="%(asctime)s %(message)s"):
    """Appends the records of logger `logger_name` (at INFO and above) to `path` inside the block.

    Appending keeps the history of earlier jobs in the same place (a resumed run, a rebuild).
    The logger's level is restored afterwards. A write that fails raises from the logging call
    (see `_StrictFileHandler`).
    """
    logger = logging.getLogger(logger_name)
    handler = _StrictFileHandler(path)
    handler.setFormatter(logging.Formatter(formatter))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def format_metrics(metrics):
    """`{"loss": 4.2, "batches": 124}` -> `"loss 4.2000 | batches 124"`, for log lines."""
    return " | ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in (metrics or {}).items()
    )
