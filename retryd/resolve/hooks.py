"""Hooks on the way back: a transform and a JSON Schema check between resolution and the guards.

Off unless a `[[hooks]]` rule matches a resolved message (by its DLQ's name or its
target's ARN; the first matching rule decides). Then, in this order:

1. transform - a Python callable, `transform(payload, context)`, named by an entry
   point of the `retryd.transforms` group or by a dotted path. `payload` is the
   body parsed as JSON (the text itself when it is not JSON); `context` is a
   FailureContext. It returns the payload to send (a `str` is sent as that text,
   anything else as JSON) or `ParkInstead(reason)`. It runs in a worker thread
   under a time limit: an exception or an overrun parks the message
   `transform-failed`, and the rest of the batch goes on. What it sends, and any
   copy it parks, carries `retryd.transform = name@version`.
2. validate - the payload about to be sent must satisfy the rule's JSON Schema;
   otherwise it is parked `invalid-payload`, with where and which keyword failed.

The idempotency key stays the one the resolver derived from the message as it
sat in the DLQ, so attempts keep counting across transformed resends.
Park details name exception types and schema keywords, never payload values:
they are logged, and payloads are not.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread
import structlog

from retryd.arns import Arn, arn_fields, fields_match, parse_glob
from retryd.errors import ConfigError
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Job, MessageAttribute, ParkReason, Unresolvable
from retryd.resolve.keys import compact_json
from retryd.settings import HookRule, Settings
from retryd.stamps import TRANSFORM as TRANSFORM_ATTRIBUTE

ENTRY_POINT_GROUP = "retryd.transforms"
UNVERSIONED = "unversioned"
# Transforms of one batch run side by side, at most this many threads at once.
TRANSFORM_THREADS = 8
# Message attributes AWS services put the failure in (Lambda async DLQs, EventBridge).
_ERROR_ATTRIBUTES = (("ErrorCode", "ErrorMessage"), ("ERROR_CODE", "ERROR_MESSAGE"))
# How much of a transform's own park reason, or a schema keyword's value, a detail quotes.
_SHOWN_CHARS = 300

_log = structlog.get_logger("retryd.hooks")


@dataclass(frozen=True, slots=True)
class FailureContext:
    """What a transform is told about the message it rewrites."""

    # The DLQ the message was received from.
    source_queue: str
    # Where it is about to be resubmitted.
    target_arn: str
    # Resubmissions already made (0 the first time retryd sends it back).
    attempt: int
    # The failure the AWS service recorded, when it recorded one in an attribute.
    error: str | None
    message_id: str
    # The message's String and Number attributes, by name.
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ParkInstead:
    """A transform's answer for a message that must not be resubmitted: parked with `reason`."""

    reason: str


TransformFunction = Callable[[Any, FailureContext], Any]


@dataclass(frozen=True, slots=True)
class Transform:
    """A loaded transform and what identifies it on the messages it touched."""

    name: str
    version: str
    function: TransformFunction

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class Schema:
    """A loaded JSON Schema, named by its file for details and metrics."""

    name: str
    validator: Any


@dataclass(frozen=True, slots=True)
class HookSet:
    """The hooks of one rule, loaded."""

    transform: Transform | None
    timeout_s: float
    schema: Schema | None


def load_transform(spec: str) -> Transform:
    """An entry point of `retryd.transforms` by name, else a dotted path; ConfigError if neither."""
    for point in entry_points(group=ENTRY_POINT_GROUP, name=spec):
        try:
            function = point.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is a config problem
            raise ConfigError(
                [f"hooks.transform: entry point {spec!r} failed to load: {type(exc).__name__}"]
            ) from None
        dist_version = point.dist.version if point.dist is not None else UNVERSIONED
        return Transform(spec, dist_version, _callable(spec, function))
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(
            [
                f"hooks.transform: {spec!r} is no entry point of {ENTRY_POINT_GROUP!r} and no "
                "dotted path (package.module:function)"
            ]
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config problem
        raise ConfigError(
            [f"hooks.transform: cannot import {module_name!r}: {type(exc).__name__}: {exc}"]
        ) from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ConfigError([f"hooks.transform: {module_name!r} has no {attribute!r}"])
    return Transform(spec, _module_version(module), _callable(spec, function))


def _callable(spec: str, function: object) -> TransformFunction:
    if not callable(function):
        raise ConfigError([f"hooks.transform: {spec!r} is not callable"])
    # Any callable: its signature is the transform author's to get right.
    return function


def _module_version(module: Any) -> str:
    """The version of the distribution the module comes from, else its __version__."""
    top = module.__name__.split(".", 1)[0]
    for dist in packages_distributions().get(top, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    declared = getattr(module, "__version__", None)
    return declared if isinstance(declared, str) and declared else UNVERSIONED


def load_schema(path: str) -> Schema:
    """A JSON Schema file, checked against its own metaschema; ConfigError if unusable."""
    where = f"hooks.schema_path: {path}"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{where}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: cannot be read: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"{where}: not valid JSON: {exc}"]) from None
    if not isinstance(document, dict):
        raise ConfigError([f"{where}: a JSON Schema file holds a JSON object"])
    # Imported for a schema only: with its dependencies, 50 ms of every drain's start-up
    # (inside every `retryd once`) that a configuration without schemas never needs.
    import jsonschema.exceptions  # noqa: PLC0415
    import jsonschema.validators  # noqa: PLC0415

    validator_class = jsonschema.validators.validator_for(document)
    try:
        validator_class.check_schema(document)
    except jsonschema.exceptions.SchemaError as exc:
        raise ConfigError([f"{where}: not a valid JSON Schema: {exc.message}"]) from None
    return Schema(Path(path).name, validator_class(document))


class Hooks:
    """The `[[hooks]]` rules, loaded once; applied to each batch's resolved messages."""

    def __init__(
        self, rules: Sequence[tuple[HookRule, HookSet]], metrics: Metrics | None = None
    ) -> None:
        self._rules = tuple(
            (rule.queue, parse_glob(rule.target) if rule.target else None, hooks)
            for rule, hooks in rules
        )
        self._metrics = metrics
        self._threads = anyio.CapacityLimiter(TRANSFORM_THREADS)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Hooks | None:
        """The hooks these settings configure; None when there are none. ConfigError if unusable."""
        if not settings.hooks:
            return None
        problems: list[str] = []
        loaded: list[tuple[HookRule, HookSet]] = []
        for index, rule in enumerate(settings.hooks):
            try:
                transform = load_transform(rule.transform) if rule.transform else None
                schema = load_schema(rule.schema_path) if rule.schema_path else None
            except ConfigError as exc:
                problems.extend(p.replace("hooks.", f"hooks.{index}.", 1) for p in exc.problems)
                continue
            loaded.append((rule, HookSet(transform, rule.transform_timeout_s, schema)))
        if problems:
            raise ConfigError(problems)
        return cls(loaded, metrics)

    def hooks_for(self, job: Job) -> HookSet | None:
        """The hooks of the first rule matching the job's DLQ name or target ARN."""
        try:
            target_fields = arn_fields(Arn.parse(job.target.arn))
        except ValueError:
            target_fields = None
        queue = job.letter.queue.name
        for queue_glob, target_glob, hooks in self._rules:
            if queue_glob is not None and (
                queue_glob == queue or fnmatch.fnmatchcase(queue, queue_glob)
            ):
                return hooks
            if (
                target_glob is not None
                and target_fields is not None
                and fields_match(target_fields, target_glob)
            ):
                return hooks
        return None

    async def apply(self, answers: Sequence[Job | Unresolvable]) -> list[Job | Unresolvable]:
        """Each answer, with the hooks of its rule applied to the Jobs; never raises for one."""
        results: list[Job | Unresolvable] = list(answers)

        async def run(index: int, job: Job, hooks: HookSet) -> None:
            results[index] = await self._run(job, hooks)

        async with anyio.create_task_group() as group:
            for index, answer in enumerate(answers):
                hooks = self.hooks_for(answer) if isinstance(answer, Job) else None
                if isinstance(answer, Job) and hooks is not None:
                    group.start_soon(run, index, answer, hooks)
        return results

    async def _run(self, job: Job, hooks: HookSet) -> Job | Unresolvable:
        if hooks.transform is not None:
            transformed = await self._transform(job, hooks.transform, hooks.timeout_s)
            if isinstance(transformed, Unresolvable):
                return transformed
            job = transformed
        if hooks.schema is not None:
            problem = _schema_problem(job.body, hooks.schema)
            self._count("validate", hooks.schema.name, "ok" if problem is None else "invalid")
            if problem is not None:
                return Unresolvable(_stamped(job), ParkReason.INVALID_PAYLOAD, problem)
        return job

    async def _transform(
        self, job: Job, transform: Transform, timeout_s: float
    ) -> Job | Unresolvable:
        payload = _payload(job.body)
        context = _context(job)
        stamped = replace(
            job,
            forward_attributes=MappingProxyType(
                {
                    **job.forward_attributes,
                    TRANSFORM_ATTRIBUTE: MessageAttribute.string(transform.label),
                }
            ),
        )

        def failed(result: str, detail: str) -> Unresolvable:
            self._count("transform", transform.name, result)
            return Unresolvable(
                _stamped(stamped), ParkReason.TRANSFORM_FAILED, f"{transform.label} {detail}"
            )

        try:
            # The time limit starts once a thread is ours: a message waiting behind other
            # transforms has not overrun, and must not be parked for the wait.
            async with self._threads:
                with anyio.fail_after(timeout_s):
                    answer = await anyio.to_thread.run_sync(
                        transform.function,
                        payload,
                        context,
                        abandon_on_cancel=True,
                        # The shared limiter is held above; this one only keeps the call
                        # off anyio's default limiter, which the ledger's threads share.
                        limiter=anyio.CapacityLimiter(1),
                    )
        except TimeoutError:
            # The thread cannot be stopped: it is left to finish on its own, unheard.
            _log.warning(
                "transform-timed-out", transform=transform.label, queue=context.source_queue
            )
            return failed("timeout", f"did not finish within {timeout_s:g} s")
        # SystemExit too: a transform that calls sys.exit() has failed; retryd has not.
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a transform's bug parks one message
            _log_failure(transform, job.letter, exc)
            return failed("failed", f"raised {type(exc).__name__}")
        if isinstance(answer, ParkInstead):
            self._count("transform", transform.name, "parked")
            return Unresolvable(
                _stamped(stamped),
                ParkReason.TRANSFORM_PARKED,
                f"{transform.label}: {str(answer.reason)[:_SHOWN_CHARS]}",
            )
        # Compared with a fresh parse, not with `payload`: a transform may change its copy
        # in place and return it, and that is a change.
        try:
            body = _body(answer, _payload(job.body), job.body)
        except Exception:  # noqa: BLE001 - an answer that breaks when compared or written
            body = None
        if body is None:
            return failed("failed", f"returned {type(answer).__name__}, which is not JSON")
        self._count("transform", transform.name, "ok")
        return replace(stamped, body=body)

    def _count(self, hook: str, name: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.record_hook_run(hook, name, result)


def _payload(body: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return body


def _body(answer: Any, payload: Any, original: str) -> str | None:
    """The text to send for a transform's answer; None when it cannot be written as JSON."""
    if isinstance(answer, str):
        return answer
    if answer is None:
        return None
    if answer == payload:
        # Untouched: keep the original bytes rather than a re-serialised copy.
        return original
    try:
        return compact_json(answer)
    except (TypeError, ValueError, RecursionError):
        return None


def _context(job: Job) -> FailureContext:
    letter = job.letter
    attributes = {
        name: attribute.string_value
        for name, attribute in letter.message_attributes.items()
        if attribute.string_value is not None
    }
    return FailureContext(
        source_queue=letter.queue.name,
        target_arn=job.target.arn,
        attempt=job.attempt,
        error=_recorded_error(letter),
        message_id=letter.message_id,
        attributes=MappingProxyType(attributes),
    )


def _recorded_error(letter: DeadLetter) -> str | None:
    for code_name, message_name in _ERROR_ATTRIBUTES:
        code = letter.attribute_string(code_name)
        message = letter.attribute_string(message_name)
        if code or message:
            return ": ".join(part for part in (code, message) if part)
    return None


def _stamped(job: Job) -> DeadLetter:
    """The letter with the job's transform stamp, so that a parked copy shows what ran."""
    label = job.forward_attributes.get(TRANSFORM_ATTRIBUTE)
    if label is None:
        return job.letter
    letter = job.letter
    return replace(
        letter, message_attributes={**letter.message_attributes, TRANSFORM_ATTRIBUTE: label}
    )


def _schema_problem(body: str, schema: Schema) -> str | None:
    """Why the body fails the schema (path and keyword, no payload values); None if it passes."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return f"schema {schema.name}: the payload is not JSON"
    import jsonschema.exceptions  # noqa: PLC0415 - loaded with the schema (load_schema)

    error = jsonschema.exceptions.best_match(schema.validator.iter_errors(document))
    if error is None:
        return None
    expected = json.dumps(error.validator_value, default=str)[:_SHOWN_CHARS]
    return f"schema {schema.name}: {error.json_path} fails {error.validator!s} {expected}"


def _log_failure(transform: Transform, letter: DeadLetter, exc: BaseException) -> None:
    # The type and the frames only: an exception's message can quote the payload.
    _log.error(
        "transform-failed",
        transform=transform.label,
        queue=letter.queue.name,
        message_id=letter.message_id,
        error_type=type(exc).__name__,
        frames="".join(traceback.format_tb(exc.__traceback__)),
    )
