"""The errors kjob raises, one class per exit code.

Scripts and CI depend on the exit codes (see README "Exit codes"), so each kind of
failure has exactly one class here and the CLI maps the class to the code. Nothing from
the `kubernetes` client or the YAML parser is allowed to escape the library: callers
wrap those in one of these with `raise ... from e`.
"""

from __future__ import annotations


class KjobError(Exception):
    """Base class. `exit_code` is what `kjob` exits with; the message is shown as is."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """The message as the CLI prints it: the text, then an optional hint line."""
        out = self.message.splitlines() or [self.message]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class JobFailed(KjobError):
    """The job itself failed (e.g. `submit --wait` saw the Failed condition)."""

    exit_code = 1


class InvalidInput(KjobError):
    """Bad spec file or flags. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems or [])

    def lines(self) -> list[str]:
        if not self.problems:
            return super().lines()
        out = list(self.problems)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class ClusterUnavailable(KjobError):
    """Cannot talk to the API server: connection, TLS, 401, timeouts, 5xx after retries;
    or, for a local run, this machine could not start it."""

    exit_code = 3


class Forbidden(KjobError):
    """RBAC denied a call (403); the message names the verb and resource."""

    exit_code = 4


class NotFound(KjobError):
    """A job, namespace, pod, checkpoint or the operator's CRD does not exist."""

    exit_code = 5


class Conflict(KjobError):
    """A job of that name exists with a different spec (use --replace); or fetch-ckpt's
    claim is held where no new pod can mount it (ReadWriteOncePod in use)."""

    exit_code = 6


class VerificationFailed(KjobError):
    """A fetched checkpoint did not match the checksum in the trainer's index."""

    exit_code = 7


EXIT_CODES = {
    0: "success",
    1: "the job itself failed",
    2: "bad input: spec file or flags",
    3: "cluster unreachable or failing (connection, TLS, 401, timeouts, 5xx); a local run that cannot start",
    4: "forbidden by RBAC (403)",
    5: "not found: job, namespace, pod, checkpoint or CRD",
    6: "conflict: job exists with a different spec; a checkpoint claim held where no new pod can mount it",
    7: "checkpoint transfer failed verification",
}
