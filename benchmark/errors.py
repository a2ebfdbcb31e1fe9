"""The one exception type the CLI turns into a one-line message (full traceback with --debug)."""


class BenchError(Exception):
    """A problem the user can fix: the message says what is wrong, where, and how to fix it."""


def missing_extra(extra: str, needed_by: str, err: ImportError) -> BenchError:
    """The error for an optional dependency group that is not installed (pyproject's extras)."""
    return BenchError(f"{needed_by} needs the '{extra}' extra ({err.name or err} is not installed); "
                      f"fix: pip install 'sias-bench[{extra}]'")


def did_you_mean(name: str, known) -> str:
    """` (did you mean 'x'?)` for the closest known name, or an empty string."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class InvalidOptions(BenchError, ValueError):
    """A pydantic model's validation error as one BenchError line. Also a ValueError, so when the
    model is validated inside another (the run configuration), pydantic reports it there and
    `describe_errors` names the problem under the outer key."""

    def __init__(self, what: str, validation, model):
        self.validation, self.model = validation, model
        super().__init__(f"{what}: {describe_errors(validation, model)}")


def describe_errors(e, model, prefix: str = "") -> str:
    """A pydantic ValidationError of `model` as one line: the first problem as `key=value: what is
    wrong` (+ how many more); an unknown key gets a "did you mean" from the fields of its model."""
    import json

    errors = e.errors()
    err = errors[0]
    # drop pydantic's union-branch tags (`literal['a','b']`, `int`) from the location
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("literal[", "function-"))
           and str(x) not in ("int", "str", "float", "bool", "none")]
    key = prefix + ".".join(loc)
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, InvalidOptions):  # a nested model's own one-line error: name it under `key`
        more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
        return describe_errors(inner.validation, inner.model, f"{key}.") + more
    message = err["msg"].removeprefix("Value error, ").removeprefix("Input ")
    message = message[:1].lower() + message[1:]
    if err["type"] == "extra_forbidden":
        known = list(_fields_at(model, loc[:-1]))
        hint = did_you_mean(loc[-1], known)
        message = f"unknown key{hint or '; known: ' + ', '.join(known)}"
    if err["type"] == "literal_error" and isinstance(err.get("input"), str):
        import re

        message += did_you_mean(err["input"], re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
    if err["type"] == "missing" or not loc:  # not loc: a check across fields of the model
        text = f"{key.rstrip('.')}: {message}" if key else message
    else:
        value = err.get("input")
        text = f"{key}={json.dumps(value) if isinstance(value, str) else value}: {message}"
    return text + (f" ({len(errors) - 1} more)" if len(errors) > 1 else "")


def _fields_at(model, path: list[str]) -> dict:
    """The fields of the (nested) pydantic model at `path`; empty when the path leaves the models."""
    for part in path:
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
            return {}
        model = annotation
    return model.model_fields
