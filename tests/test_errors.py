"""Every error retryd raises for a caller is a RetrydError, with the exit code it documents."""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
from contextlib import redirect_stderr

import pytest

import retryd
from retryd.commands import cli
from retryd.drain.redrive_select import Selector, SelectorError
from retryd.errors import ExitCode, RetrydError
from retryd.places import Place, PlaceError

# Exceptions that never leave retryd: each is caught where it is raised and becomes a value.
INTERNAL = {
    # Classified as a transient answer (classify.from_exception): a SendError, not a stop.
    "retryd.classify.MalformedResponseError",
    # A job the target cannot take: turned into a refused SendError by the batch skeleton.
    "retryd.targets.base.RefusedError",
    # A body that cannot become a PutEvents entry: raised again as a RefusedError.
    "retryd.targets.event_bus.InvalidEntryError",
    # A request with no acceptable identity: the console's middleware answers it 401/403.
    "retryd.console.auth.Refused",
    # A ledger item retryd cannot have written: its key's calls fail with a LedgerError.
    "retryd.ledger.dynamodb.MalformedItemError",
}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a retryd module, by its dotted name."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(retryd.__path__, "retryd."):
        if module_info.name == "retryd.__main__":
            continue  # running it is the command line itself
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_retryd_defines_is_a_retryd_error_or_named_internal() -> None:
    """An exception class outside RetrydError must be named here with why it never escapes."""
    classes = _exception_classes()
    outside = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, RetrydError) and name not in INTERNAL
    )
    assert outside == []
    assert sorted((INTERNAL) - set(classes)) == [], "no longer defined: drop them"


def test_a_place_error_is_a_retryd_error_that_exits_1_with_one_line() -> None:
    """A place that cannot be used, escaping to the command line: its reason on one line, exit 1."""
    error = PlaceError(Place("111122223333", "eu-west-1"), "cannot assume role/x: denied")
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = cli._explain(error)
    assert code is ExitCode.CYCLE_FAILED
    assert stderr.getvalue() == "retryd: cannot assume role/x: denied\n"


def test_a_bad_selector_is_an_input_error_that_exits_2_with_its_message() -> None:
    """A selector that cannot be used exits 2 (bad input), naming the option; still a ValueError."""
    with pytest.raises(SelectorError) as raised:
        Selector(targets=("charge",))
    assert isinstance(raised.value, ValueError)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = cli._explain(raised.value)
    assert code is ExitCode.CONFIG
    assert stderr.getvalue().startswith("retryd: --target: ")
    assert stderr.getvalue().count("\n") == 1
