"""User-facing errors: one line that names the file or key and the valid choices."""


class AblationError(Exception):
    """An error caused by the user's input (a path, a config key, a skip spec, ...).

    The CLI prints ``error: <message>`` on one line and exits with status 2, never a traceback. Messages must name
    the offending file or key and, where there is a finite set, the valid choices.
    """
