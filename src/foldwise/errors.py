"""The one exception type for bad input: its message names the file, row or key at fault."""


class InputError(ValueError):
    """Input data or params that the pipeline cannot use; raised before anything is trained."""
