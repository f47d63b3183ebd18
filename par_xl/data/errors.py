"""The one exception the data pipeline raises for bad input or output."""


class DataError(ValueError):
    """Bad input, flags or output location for the data pipeline.

    The message names the file, flag or value at fault and says what is expected;
    `build_data.py` prints it and exits non-zero, without a traceback.
    """
