"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""


class SageError(Exception):
    """A user-facing error: bad input, a missing file, an unmet dependency.

    The message is printed as one line (`error: ...`) with exit code 1; no traceback.
    """


def require(module: str, package: str | None = None, extra: str | None = None):
    """Import an optional dependency or fail with a message naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = package or module
        hint = f"pip install 'sage-cli[{extra}]'" if extra else f"pip install {pkg}"
        raise SageError(f"this needs the '{pkg}' package, which is not installed ({hint})") from None
