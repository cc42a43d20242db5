"""Errors a user can fix. The CLI prints their message on one line and exits non-zero, no traceback."""


class ATCUserError(Exception):
    """Base for every error caused by the user's input, parameters or files (not by a bug)."""


class ATCInputError(ATCUserError, ValueError):
    """Price data the kernels refuse (interior NaN, close <= 0, wrong shape); names symbol and bar."""
