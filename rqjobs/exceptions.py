"""The project's exceptions, under one root class.

Jobs raise a `PermanentJobError` subclass for failures that a retry cannot fix; the job class then skips the
remaining retries. Any other exception is treated as transient and retried by the job's retry policy.
"""

from rq.exceptions import NoSuchJobError


class RqjobsError(Exception):
    """Raised for any failure the project itself detects; the root of all project exceptions."""


class SettingsError(RqjobsError):
    """Raised when an environment variable holds a value the project cannot use."""


class RedisUnavailable(RqjobsError):
    """Raised when the Redis server cannot be reached or the embedded one cannot be started."""


class NotReplicated(RedisUnavailable):
    """Raised when fewer replicas than REDIS_WAIT_REPLICAS confirm a write in time; it may not survive a failover."""


class UnknownJob(RqjobsError):
    """Raised when a job name is not one of the registered jobs."""


class InvalidJobArguments(RqjobsError):
    """Raised when a job's arguments do not fit its signature or cannot be stored as JSON."""


class UnknownQueue(RqjobsError):
    """Raised when a queue name is not one of the configured queues."""


class UnsuitableQueue(UnknownQueue):
    """Raised when a worker is asked for a queue whose jobs it may not run (`--in-process` on a forking queue)."""


class PermanentJobError(RqjobsError):
    """Raised by a job when retrying it cannot help (bad input, a missing resource); it is not retried."""


class InvalidSubmission(RqjobsError):
    """Raised when a warehouse submission is refused (bad address, duplicate, submissions disabled)."""


class WarehouseNotFound(RqjobsError):
    """Raised when a warehouse id names no warehouse, or one that was removed."""


class InvalidJobId(RqjobsError):
    """Raised for a job id that rq cannot take: an id holds only letters, digits, _ and -."""


class JobActionRefused(RqjobsError):
    """Raised when an action does not fit the job's state (stopping a queued job, cancelling a finished one)."""


class InvalidRepositoryAddress(PermanentJobError, InvalidSubmission):
    """Raised when a repository address is not one the project may clone (scheme, characters, path)."""


class SecretKeyMissing(PermanentJobError, InvalidSubmission):
    """Raised when a credential must be stored but `JOBS_SECRET_KEY` is not set."""


class GitError(RqjobsError):
    """Raised when git fails in a way that a later retry may fix (network, a remote hiccup)."""


class RepositoryNotFound(PermanentJobError, GitError):
    """Raised when the repository or its branch does not exist at the address."""


class RepositoryUnauthorized(PermanentJobError, GitError):
    """Raised when the remote refuses the credentials, or asks for some and none were given."""


class RepositoryTooLarge(PermanentJobError, GitError):
    """Raised when a clone or fetch grows past `GIT_MAX_REPO_SIZE` or `GIT_MAX_REPO_FILES`; the clone is removed."""


class CloneTimeout(PermanentJobError, GitError):
    """Raised when a clone or fetch runs past `GIT_CLONE_TIMEOUT`; the partial clone is removed."""


class DatabaseUnavailable(RqjobsError):
    """Raised when the database cannot be reached or stays locked; the work is left for the next run."""


class SchemaNotCurrent(RqjobsError):
    """Raised when a PostgreSQL or MySQL database has no schema yet, or an older one than the code needs."""


class MigrationError(PermanentJobError):
    """Raised when a schema step, a backup or a restore cannot go on; the message says why."""


class InvalidStatisticsDate(PermanentJobError):
    """Raised when a statistics date is not a real past or present UTC day written as YYYY-MM-DD."""


class SoftTimeLimitExceeded(PermanentJobError):
    """Raised inside a job that ran past its soft time limit, so it can clean up before it is killed."""


class HardTimeLimitExceeded(PermanentJobError):
    """Raised inside a job run in its worker's own process (`--in-process`) that reached its hard time limit."""


class JobStoppedOnRequest(PermanentJobError):
    """Raised inside a job run in its worker's own process (`--in-process`) that `rqjobs job stop` stopped."""


class WorkerStopped(RqjobsError):
    """Raised when a worker's loop ends on an error (Redis lost mid-job, say) rather than on request."""


class PlanLocked(RqjobsError):
    """Raised when another process holds the periodic plan's registration lock for longer than a registration waits."""


class WorkHorseKilled(RqjobsError):
    """Raised (to failure callbacks only) when a job's work horse was killed: its hard time limit, the OOM killer."""


class ForbiddenJob(PermanentJobError):
    """Raised when a job in Redis names a function outside the registered job modules."""


class UnreadableJob(PermanentJobError, NoSuchJobError):
    """Raised when a job hash in Redis holds fields that cannot be decoded (forged or corrupted).

    It is also an rq `NoSuchJobError`, so that rq's own loops (registry cleanup, schedulers, the intermediate queue)
    pass over such a job as over a vanished one instead of stopping at it.
    """


class ModelNotConfigured(PermanentJobError):
    """Raised when a language model is needed but `LLM_BASE_URL` and `LLM_MODEL` are not set."""


class ModelError(RqjobsError):
    """Raised when a request to the language model's server fails; the message is one redacted line.

    `status` holds the HTTP status when the server answered one, else None.
    """

    status: int | None = None


class ModelRejected(ModelError, PermanentJobError):
    """Raised when the model server refuses a request (HTTP 400, 401, 403, 404, 422): sending it again cannot help."""


class ModelUnavailable(ModelError):
    """Raised when the model server fails, times out, cannot be reached or keeps rate limiting; a retry may help."""


class UnusableAnswer(RqjobsError):
    """Raised when a model's answer cannot be stored as a page: empty, an echo of the prompt, or cut off at length.

    A retry asks again, and a model's next answer may well be a good one.
    """


class InvalidCatalog(RqjobsError):
    """Raised when a model's proposed catalog of pages is not the JSON the project asked for; the message says why."""


class ContextTooSmall(PermanentJobError):
    """Raised when the model's context window, less the answer's room, cannot hold even the instructions of a prompt."""
