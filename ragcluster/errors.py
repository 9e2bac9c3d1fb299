"""Domain errors. Pure cores raise these; the gRPC error boundary (interceptors.py) maps them to status
codes, so no core module needs to import grpc."""


class RagclusterError(Exception):
    """Base class; ``code`` names the gRPC status code the boundary answers with; ``details`` are
    protobuf messages sent along as google.rpc.Status details (rich error model)."""

    code = "INTERNAL"

    def __init__(self, message: str = "", details: list | None = None):
        super().__init__(message)
        self.details = details or []


class InvalidArgument(RagclusterError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFound(RagclusterError):
    code = "NOT_FOUND"


class FailedPrecondition(RagclusterError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(RagclusterError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(RagclusterError):
    code = "UNAVAILABLE"


class DeadlineExceeded(RagclusterError):
    code = "DEADLINE_EXCEEDED"


class Unauthenticated(RagclusterError):
    code = "UNAUTHENTICATED"


class PermissionDenied(RagclusterError):
    code = "PERMISSION_DENIED"
