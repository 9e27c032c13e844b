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


def did_you_mean(word: str, choices, cutoff: float = 0.6, quote: str = "'") -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' when none is close: the one hint every
    "unknown name" error uses (recipe keys, judges, categories, defect kinds)."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""
