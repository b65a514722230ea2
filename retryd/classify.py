"""Every AWS failure, in one place: transient (retry later), permanent (park now), or config.

Transient failures leave the message in its DLQ to reappear after its lease, so
an unknown error code is treated as transient: the worst case is a message that
waits, never one that is parked or lost on a guess. Configuration failures
(retryd's own credentials or set-up) also leave the message where it is, but
are named as such: waiting will not fix them, a person has to.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from retryd.models import ErrorClass, Refusal, SendError

# The target itself says no, and will say no again: missing, forbidden, or a payload
# it cannot take. Codes from the Lambda, SQS, SNS, Step Functions and EventBridge
# API references.
PERMANENT_CODES = frozenset(
    {
        # any service
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "UnrecognizedClientException",
        "ValidationException",
        "ValidationError",
        "InvalidParameter",
        "InvalidParameterException",
        "InvalidParameterValue",
        "InvalidParameterValueException",
        "NotFound",
        "NotFoundException",
        "ResourceNotFoundException",
        # Lambda
        "InvalidRequestContentException",
        "RequestTooLargeException",
        "UnsupportedMediaTypeException",
        "InvalidRuntimeException",
        # SQS
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "InvalidMessageContents",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MissingParameter",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "BatchRequestTooLong",
        # SNS
        "InvalidSecurity",
        "EndpointDisabled",
        "PlatformApplicationDisabled",
        "KMSDisabled",
        "KMSNotFound",
        "KMSInvalidState",
        # EventBridge PutEvents per-entry codes
        "InvalidArgument",
        "MalformedDetail",
        "NotAuthorizedForSourceException",
        # Step Functions
        "StateMachineDoesNotExist",
        "StateMachineDeleting",
        "InvalidArn",
        "InvalidExecutionInput",
        "InvalidName",
        "ExecutionAlreadyExists",
        "StateMachineTypeNotSupported",
        # retryd's own refusals, made before any call
        *(refusal.value for refusal in Refusal),
    }
)

# Worth naming even though unknown codes are transient anyway: they are what the
# breaker and the error-class metric are about.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "AWS.SimpleQueueService.Throttled",
        "KMSThrottling",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServiceException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalException",
        "EC2ThrottledException",
        "ResourceConflictException",
        "ResourceNotReadyException",
        "ExecutionLimitExceeded",
        "KMSOptInRequired",
    }
)

_SERVER_ERROR = 500

# The code of a 200 answer that lacks what the API promises (see MalformedResponseError).
MALFORMED_RESPONSE = "retryd.MalformedResponse"
# botocore's response parsers: an exception raised in them means the call was made
# and its answer could not be read (it raises KeyError for a query-protocol answer
# that lacks its result element, e.g. a proxy's HTML page).
_PARSER_MODULES = frozenset({"botocore.parsers", "aiobotocore.parsers"})


class MalformedResponseError(Exception):
    """A 200 answer without what the API promises: a truncated body, a proxy's page.

    Transient: the service (or something in front of it) answered badly, and the
    call may well have done its work, so nothing is concluded about the message.
    """

    def __init__(self, operation: str, problem: str) -> None:
        self.operation = operation
        super().__init__(f"{operation}: {problem}")


def required(response: Mapping[str, Any], name: str, operation: str) -> str:
    """The non-empty text `response[name]`; MalformedResponseError when the answer lacks it."""
    value = response.get(name) if isinstance(response, Mapping) else None
    if not isinstance(value, str) or not value:
        raise MalformedResponseError(operation, f"the answer has no {name}")
    return value


def is_malformed_response(exc: BaseException) -> bool:
    """Whether `exc` says an answer was unreadable, rather than that a call failed."""
    if isinstance(exc, MalformedResponseError):
        return True
    if isinstance(exc, BotoCoreError | ClientError):
        # botocore's own errors (ResponseParserError included) classify themselves.
        return False
    return any(
        frame.f_globals.get("__name__") in _PARSER_MODULES
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


# What SQS answers (JSON protocol, then query-compatible) for a queue that is not there.
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def is_missing_queue(exc: ClientError) -> bool:
    """Whether SQS said the queue does not exist (as opposed to any other refusal)."""
    return exc.response.get("Error", {}).get("Code") in MISSING_QUEUE_CODES


def classify_code(code: str, http_status: int | None = None) -> ErrorClass:
    """Permanent only when AWS said so by code; a 5xx is always transient."""
    if http_status is not None and http_status >= _SERVER_ERROR:
        return ErrorClass.TRANSIENT
    if code in PERMANENT_CODES:
        return ErrorClass.PERMANENT
    return ErrorClass.TRANSIENT


def from_client_error(exc: ClientError) -> SendError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return SendError(classify_code(code, status), code, str(error.get("Message") or ""))


def from_exception(exc: BaseException) -> SendError:
    """Any exception from an AWS call, as a SendError; network trouble is transient."""
    if isinstance(exc, ClientError):
        return from_client_error(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return SendError(ErrorClass.CONFIG, type(exc).__name__, str(exc))
    if isinstance(exc, ParamValidationError):
        # botocore refused to send it: the request itself is malformed.
        return SendError(ErrorClass.PERMANENT, "ParamValidationError", str(exc))
    if isinstance(
        exc, BotoConnectionError | HTTPClientError | BotoCoreError | OSError | TimeoutError
    ):
        # Network trouble and botocore's own failures: another try may well succeed.
        return SendError(ErrorClass.TRANSIENT, type(exc).__name__, str(exc))
    if is_malformed_response(exc):
        # botocore's parser says e.g. KeyError('PublishBatchResult'): no result element.
        message = (
            str(exc)
            if isinstance(exc, MalformedResponseError)
            else f"the answer could not be read ({type(exc).__name__}: {exc})"
        )
        return SendError(ErrorClass.TRANSIENT, MALFORMED_RESPONSE, message)
    return SendError(ErrorClass.TRANSIENT, type(exc).__name__, str(exc))


def from_batch_failure(entry: Mapping[str, object]) -> SendError:
    """A failed entry of SendMessageBatch / PublishBatch / PutEvents / DeleteMessageBatch."""
    code = str(entry.get("Code") or entry.get("ErrorCode") or "Unknown")
    message = str(entry.get("Message") or entry.get("ErrorMessage") or "")
    # SQS and SNS mark entries the caller got wrong; those are never worth retrying.
    if entry.get("SenderFault") is True:
        return SendError(ErrorClass.PERMANENT, code, message)
    return SendError(classify_code(code), code, message)
