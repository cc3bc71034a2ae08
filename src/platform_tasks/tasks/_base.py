"""What every platform task shares: its contract, its queue's policy, and the retry rule."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

from celery import Task, shared_task

from platform_tasks.contracts import InvalidArgumentsError, TaskArguments, TaskContract
from platform_tasks.queues import QueuePolicy, policy_for
from platform_tasks.settings import Settings

ArgsT = TypeVar("ArgsT", bound=TaskArguments)


class PermanentTaskError(Exception):
    """The task cannot succeed however often it runs (bad address, 4xx, corrupt image)."""


class PlatformTask(Task):  # type: ignore[misc]  # celery ships no type information
    """Base class of every platform task."""

    policy: QueuePolicy
    contract: TaskContract

    @property
    def settings(self) -> Settings:
        return cast(Settings, self.app.settings)

    def retry_transient(self, error: BaseException) -> NoReturn:
        """Retry after the queue's backoff with jitter; past ``max_retries`` re-raise ``error``."""
        delay = self.policy.retry.countdown(self.request.retries, random_fraction=random.random())
        raise self.retry(exc=error, countdown=delay, max_retries=self.policy.retry.max_retries)


def platform_task(
    contract: TaskContract, arguments: type[ArgsT]
) -> Callable[[Callable[[PlatformTask, ArgsT], Any]], PlatformTask]:
    """Register ``body(task, arguments)`` as the task ``contract.name`` with its queue's policy.

    The raw message arguments are validated against the contract first; an invalid payload
    fails at once with :class:`InvalidArgumentsError` and is never retried.
    """
    if contract.arguments is not arguments:
        raise TypeError(f"{contract.name}: body takes {arguments.__name__}, "
                        f"contract says {contract.arguments.__name__}")
    policy = policy_for(contract.queue)

    def register(body: Callable[[PlatformTask, ArgsT], Any]) -> PlatformTask:
        def run(task: PlatformTask, *args: Any, **kwargs: Any) -> Any:
            validated = cast(ArgsT, contract.bind(args, kwargs))
            return body(task, validated)

        run.__name__ = body.__name__
        run.__qualname__ = body.__qualname__
        run.__doc__ = body.__doc__
        run.__module__ = body.__module__
        return cast(
            PlatformTask,
            shared_task(
                name=contract.name,
                bind=True,
                base=PlatformTask,
                typing=False,
                policy=policy,
                contract=contract,
                acks_late=policy.acks_late,
                reject_on_worker_lost=policy.acks_late,
                soft_time_limit=policy.soft_time_limit,
                time_limit=policy.time_limit,
                rate_limit=policy.rate_limit,
                max_retries=policy.retry.max_retries,
                ignore_result=False,
                track_started=policy.track_started,
                throws=(InvalidArgumentsError, PermanentTaskError),
            )(run),
        )

    return register


__all__ = ["PermanentTaskError", "PlatformTask", "platform_task"]
