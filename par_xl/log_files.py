"""Mirroring a package's log into a file for the length of a job (a build, a training run)."""

import contextlib
import logging


@contextlib.contextmanager
def log_to_file(path, logger_name, formatter="%(asctime)s %(message)s"):
    """Appends the records of logger `logger_name` (at INFO and above) to `path` inside the block.

    Appending keeps the history of earlier jobs in the same place (a resumed run, a rebuild).
    The logger's level is restored afterwards.
    """
    logger = logging.getLogger(logger_name)
    handler = logging.FileHandler(path, encoding="utf-8")
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
