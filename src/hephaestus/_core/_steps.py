"""Steps and the values they return: the building blocks of a workflow."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, final, overload

import msgspec

from ._codec import detached_copy
from ._errors import WorkflowDefinitionError
from ._model import Instance
from ._seconds import check_seconds, seconds_problem

STEP_KEY_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*")
TIMEOUT_EVENT: Final = "timeout"

Backoff: TypeAlias = Literal["exponential", "linear", "constant"]


class Emit(msgspec.Struct, frozen=True):
    """End a step with ``event``, storing ``results`` and merging ``metadata``.

    ``results`` becomes ``instance.results[step_key]``; ``metadata`` is merged
    into ``instance.metadata``. Both must be msgpack-serialisable dicts with
    string keys, otherwise the attempt fails with :class:`InvalidResult`.
    """

    event: str
    results: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class Suspend(msgspec.Struct, frozen=True):
    """Park the step until an outside event arrives (``engine.resume``).

    With ``timeout`` (seconds) the step completes with ``"timeout"`` when no
    event came in time; the deadline is persisted, so it survives crashes.
    """

    timeout: float | None = None


StepResult: TypeAlias = str | Emit | Suspend


class Retry(msgspec.Struct, frozen=True):
    """How often, and how far apart, a failing step is attempted.

    ``max_attempts`` counts the first attempt; an attempt cut short by a crash
    (and run again on recovery) is not a failed one and does not count. The
    delay after failed attempt
    ``n`` is ``initial * 2**(n-1)`` (exponential), ``initial * n`` (linear) or
    ``initial`` (constant), capped at ``max_backoff``. With ``jitter`` each
    delay is spread over ``[delay/2, delay]``, deterministically per instance,
    step and attempt.

    Raises:
        ValueError: for a non-positive ``max_attempts``, a negative delay, or an
            unknown ``backoff``.
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    initial: float = 1.0
    max_backoff: float = 30.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(f"Retry.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.backoff not in ("exponential", "linear", "constant"):
            raise ValueError(
                f"Retry.backoff must be 'exponential', 'linear' or 'constant', got {self.backoff!r}"
            )
        for name in ("initial", "max_backoff"):
            check_seconds(getattr(self, name), f"Retry.{name}")

    def delay(self, failed_attempt: int) -> float:
        """Return the un-jittered delay in seconds after attempt ``failed_attempt`` failed."""
        if self.backoff == "exponential":
            # 2.0 ** 1024 overflows (OverflowError); past 2 ** 1000 the cap applies anyway.
            raw = self.initial * 2.0 ** min(failed_attempt - 1, 1000)
        elif self.backoff == "linear":
            raw = self.initial * failed_attempt
        else:
            raw = self.initial
        return float(min(raw, self.max_backoff))


@final
class StepContext:
    """The read-only view of its instance that a step receives.

    ``initial``, ``results`` (an entry for every completed step, ``{}`` when it
    stored none), ``metadata`` (the instance's metadata) and ``config`` are
    read-only copies of the snapshot the attempt started from: mutating them
    is an error, and nothing a step does to them reaches the instance. The
    engine takes those copies when a step first reads one of them (from that
    snapshot, which never changes), so a step that reads none pays for none.
    """

    __slots__ = (
        "_config",
        "_initial",
        "_metadata",
        "_results",
        "_source",
        "attempt",
        "instance_id",
        "step",
        "version",
        "workflow",
    )

    instance_id: str
    workflow: str
    version: int
    attempt: int
    step: str
    _initial: Mapping[str, Any]
    _results: Mapping[str, Mapping[str, Any]]
    _metadata: Mapping[str, Any]
    _config: Mapping[str, Any] | None
    _source: Instance | None
    """The snapshot whose copies are still to be taken; None once they are."""

    def __init__(
        self,
        *,
        instance_id: str,
        workflow: str,
        version: int,
        initial: Mapping[str, Any],
        results: Mapping[str, Mapping[str, Any]],
        config: Mapping[str, Any] | None,
        attempt: int,
        step: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "instance_id", instance_id)
        set_(self, "workflow", workflow)
        set_(self, "version", version)
        # Read-only views, not copies: the engine never mutates a snapshot's dicts.
        set_(self, "_initial", _view(initial))
        set_(self, "_results", MappingProxyType({k: _view(v) for k, v in results.items()}))
        set_(self, "_metadata", _view({} if metadata is None else metadata))
        set_(self, "_config", None if config is None else _view(config))
        set_(self, "_source", None)
        set_(self, "attempt", attempt)
        set_(self, "step", step)

    @classmethod
    def _of(
        cls,
        instance_id: str,
        workflow: str,
        version: int,
        source: Instance,
        attempt: int,
        step: str,
    ) -> StepContext:
        """The context of attempt ``attempt`` of ``step`` of snapshot ``source``: the hot path.

        No checks, no kwargs; ``initial``, ``results``, ``metadata`` and
        ``config`` are copied from ``source`` when first read.
        """
        context = object.__new__(cls)
        # The slots' own setters: object.__setattr__ by name costs half as much again.
        _set_instance_id(context, instance_id)
        _set_workflow(context, workflow)
        _set_version(context, version)
        _set_source(context, source)
        _set_attempt(context, attempt)
        _set_step(context, step)
        return context

    def _copy_source(self) -> None:
        """Take the copies of the snapshot the attempt started from, once."""
        source = self._source
        if source is None:
            return
        initial = source.initial
        results = source.results
        metadata = source.metadata
        config = source.configs.get(self.step)
        set_ = object.__setattr__
        set_(self, "_initial", MappingProxyType(detached_copy(initial)) if initial else EMPTY_VIEW)
        set_(
            self,
            "_results",
            # Steps that stored no results (the common case) leave nothing to copy.
            MappingProxyType({k: MappingProxyType(v) for k, v in detached_copy(results).items()})
            if any(results.values())
            else MappingProxyType(dict.fromkeys(results, EMPTY_VIEW)),
        )
        set_(
            self, "_metadata", MappingProxyType(detached_copy(metadata)) if metadata else EMPTY_VIEW
        )
        set_(self, "_config", None if config is None else MappingProxyType(detached_copy(config)))
        set_(self, "_source", None)

    @property
    def initial(self) -> Mapping[str, Any]:
        """The instance's initial data (a read-only copy)."""
        if self._source is not None:
            self._copy_source()
        return self._initial

    @property
    def results(self) -> Mapping[str, Mapping[str, Any]]:
        """The results of the completed steps, by step key (read-only copies)."""
        if self._source is not None:
            self._copy_source()
        return self._results

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The instance's metadata (a read-only copy)."""
        if self._source is not None:
            self._copy_source()
        return self._metadata

    @property
    def config(self) -> Mapping[str, Any] | None:
        """The config attached by the transition that activated the step, or None."""
        if self._source is not None:
            self._copy_source()
        return self._config

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("StepContext is read-only")

    def __repr__(self) -> str:
        return (
            f"StepContext(instance_id={self.instance_id!r}, step={self.step!r}, "
            f"attempt={self.attempt})"
        )


_SLOTS: Final = vars(StepContext)
"""StepContext's slot descriptors, whose setters :meth:`StepContext._of` calls."""
_set_instance_id: Final = _SLOTS["instance_id"].__set__
_set_workflow: Final = _SLOTS["workflow"].__set__
_set_version: Final = _SLOTS["version"].__set__
_set_source: Final = _SLOTS["_source"].__set__
_set_attempt: Final = _SLOTS["attempt"].__set__
_set_step: Final = _SLOTS["step"].__set__

EMPTY_VIEW: Final[Mapping[str, Any]] = MappingProxyType({})
"""The read-only empty mapping contexts share (its dict is never mutated)."""


def _view(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(mapping, MappingProxyType):
        return mapping
    return MappingProxyType(mapping if isinstance(mapping, dict) else dict(mapping))


StepFunction: TypeAlias = Callable[[StepContext], "StepResult | Awaitable[StepResult]"]


@final
class Step:
    """A workflow step: a function plus the events it can end with.

    Create steps with :func:`step`, :func:`Wait` or :func:`WaitForEvent`.
    Calling a step calls its function, so step code can be unit-tested alone.
    """

    __slots__ = ("events", "fn", "is_async", "key", "limiter", "retry", "timeout")

    def __init__(
        self,
        fn: StepFunction,
        *,
        key: str,
        events: tuple[str, ...],
        retry: Retry | None,
        timeout: float | None,
        limiter: str | None = None,
    ) -> None:
        self.fn = fn
        self.key = key
        self.events = events
        self.retry = retry
        self.timeout = timeout
        self.limiter = limiter
        """The name of the ``open_engine(limiters=...)`` limit its attempts share, or None."""
        self.is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, ctx: StepContext) -> StepResult | Awaitable[StepResult]:
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"<Step {self.key!r} events={list(self.events)!r}>"


def _check_step(key: str, events: object, retry: object, timeout: object) -> tuple[str, ...]:
    problems: list[str] = []
    if not isinstance(key, str) or not STEP_KEY_PATTERN.fullmatch(key):
        problems.append(
            f"step key {key!r} must match [a-z][a-z0-9_]* (lower-case letters, digits, "
            "underscores; starting with a letter): pass key='...' to rename it"
        )
    event_tuple: tuple[str, ...] = ()
    if isinstance(events, str) or not isinstance(events, Iterable):
        problems.append(f"events must be a non-empty sequence of strings, got {events!r}")
    else:
        event_tuple = tuple(events)
        if not event_tuple:
            problems.append("events must not be empty: list every event the step can end with")
        for event in event_tuple:
            if not isinstance(event, str) or not event:
                problems.append(f"event {event!r} must be a non-empty string")
        duplicates = sorted({e for e in event_tuple if event_tuple.count(e) > 1})
        if duplicates:
            problems.append(f"events {duplicates!r} are declared more than once")
    if retry is not None and not isinstance(retry, Retry):
        problems.append(f"retry must be an hx.Retry or None, got {retry!r}")
    if timeout is not None:
        problem = seconds_problem(timeout, "timeout", positive=True)
        if problem is not None:
            problems.append(f"{problem} (or None for no limit)")
    if problems:
        raise WorkflowDefinitionError(f"step {key}", problems)
    return event_tuple


def _check_limiter(key: str, limiter: object) -> str | None:
    """Return ``limiter`` if it can name an ``open_engine(limiters=...)`` entry.

    Raises:
        WorkflowDefinitionError: unless it is a non-empty str or None.
    """
    if limiter is None or (isinstance(limiter, str) and limiter):
        return limiter
    raise WorkflowDefinitionError(
        f"step {key}",
        [
            f"limiter must be the name (a non-empty str) of an entry of "
            f"open_engine(limiters={{name: n}}), or None, got {limiter!r}"
        ],
    )


@overload
def step(
    fn: StepFunction,
    *,
    events: Sequence[str],
    key: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    limiter: str | None = None,
) -> Step: ...


@overload
def step(
    fn: None = None,
    *,
    events: Sequence[str],
    key: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    limiter: str | None = None,
) -> Callable[[StepFunction], Step]: ...


def step(
    fn: StepFunction | None = None,
    *,
    events: Sequence[str],
    key: str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    limiter: str | None = None,
) -> Step | Callable[[StepFunction], Step]:
    """Turn a function into a :class:`Step`: ``@step(events=...)`` or ``step(fn, events=...)``.

    Args:
        events: every event the step can end with, including events it can be
            resumed with and ``"timeout"`` if it suspends with a timeout.
        key: the step's name in the workflow and in ``results``; defaults to
            the function's ``__name__``.
        retry: the retry policy for failed attempts, or None for no retries.
        timeout: seconds allowed per attempt, or None for no limit. Its clock
            starts once the attempt holds its ``limiter``.
        limiter: the name of a concurrency limit given to
            ``open_engine(limiters={name: n})``: at most ``n`` attempts of the
            steps naming it run at once in the engine; the others wait their
            turn (first come, first served) before their code starts.

    Raises:
        WorkflowDefinitionError: for a key that does not match
            ``[a-z][a-z0-9_]*``, empty or non-string events, a bad ``retry``,
            a non-positive ``timeout`` or a ``limiter`` that is no non-empty str.
    """

    def decorate(function: StepFunction) -> Step:
        if not callable(function):
            raise TypeError(f"hx.step needs a function, got {function!r}")
        step_key = key if key is not None else getattr(function, "__name__", "")
        event_tuple = _check_step(step_key, events, retry, timeout)
        return Step(
            function,
            key=step_key,
            events=event_tuple,
            retry=retry,
            timeout=None if timeout is None else float(timeout),
            limiter=_check_limiter(step_key, limiter),
        )

    if fn is None:
        return decorate
    return decorate(fn)


def Wait(seconds: float, *, key: str) -> Step:  # noqa: N802 - public factory named as a type
    """Return a step that sleeps durably for ``seconds``, then ends with ``"timeout"``.

    Raises:
        WorkflowDefinitionError: for a bad key or a negative ``seconds``.
    """
    problem = seconds_problem(seconds, "Wait seconds")
    if problem is not None:
        raise WorkflowDefinitionError(f"step {key}", [problem])
    delay = float(seconds)

    async def wait(ctx: StepContext) -> StepResult:
        return Suspend(timeout=delay)

    return step(wait, events=(TIMEOUT_EVENT,), key=key)


def WaitForEvent(  # noqa: N802 - public factory named as a type
    event: str, *, key: str, timeout: float | None = None
) -> Step:
    """Return a step that suspends until ``event`` is resumed, storing its payload as results.

    With ``timeout`` (seconds) the step ends with ``"timeout"`` instead when the
    event has not come in time.

    Raises:
        WorkflowDefinitionError: for a bad key, an empty event, or a
            non-positive ``timeout``.
    """
    problem = None if timeout is None else seconds_problem(timeout, "WaitForEvent timeout")
    if problem is not None:
        raise WorkflowDefinitionError(f"step {key}", [f"{problem} (or None for no limit)"])
    limit = None if timeout is None else float(timeout)

    async def wait_for_event(ctx: StepContext) -> StepResult:
        return Suspend(timeout=limit)

    events = (event,) if limit is None or event == TIMEOUT_EVENT else (event, TIMEOUT_EVENT)
    return step(wait_for_event, events=events, key=key)


@final
class _DoneType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "hx.Done"

    def __reduce__(self) -> str:
        return "Done"


Done: Final = _DoneType()
"""The terminal marker: use it as a transition target to end a path."""


@final
class Target:
    """A transition target that passes ``config`` to the step's context."""

    __slots__ = ("config", "step")

    def __init__(self, step: Step, config: Mapping[str, Any] | None = None) -> None:
        self.step = step
        self.config: dict[str, Any] | None = None if config is None else dict(config)

    def __repr__(self) -> str:
        return f"Target({self.step.key!r}, {self.config!r})"


RouteChoice: TypeAlias = "Step | Target | Sequence[Step | Target]"


@final
class Route:
    """A transition target chosen at run time among ``targets``.

    ``choose(ctx)`` receives the context of the step that just completed (its
    own results included) and returns one of ``targets`` or a list of them.
    Returning anything else fails that step's attempt.
    """

    __slots__ = ("choose", "targets")

    def __init__(
        self, choose: Callable[[StepContext], RouteChoice], targets: Sequence[Step | Target]
    ) -> None:
        self.choose = choose
        self.targets: tuple[Step | Target, ...] = tuple(targets)

    def __repr__(self) -> str:
        return f"Route({[t.key if isinstance(t, Step) else t for t in self.targets]!r})"
