"""What runs inside a worker process: a frame parsed, validated and made ready, or a refusal.

The loop hands over one string and gets one small value back (`Prepared`, a validated message,
or `Refused`): never a parsed layer, never a pickled exception with its traceback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from gischat.protocol import geojson, parsing, refusals
from gischat.protocol import messages as models
from gischat.protocol.dialects import AnyClientMessage, Dialect, parse_object
from gischat.protocol.refusals import MEMORY_REASON, NOT_JSON_REASON
from gischat.work import images
from gischat.work.handoff import Parcel
from gischat.work.heap import release_memory, tune_allocator

# After a job on an input longer than this, a worker hands its freed memory back at once.
LARGE_INPUT = 2 * 1024 * 1024
# Address space a worker may map: a pathological input gets MemoryError (a refusal) instead
# of pushing the machine into swap.
WORKER_ADDRESS_SPACE = 3 * 1024**3
# Workers run at a lower CPU priority than the server: when every core is busy validating
# layers, the event loop (which every room waits on) still gets a core the moment it needs it.
WORKER_NICENESS = 10


@dataclass(frozen=True, slots=True)
class Prepared:
    """A heavy message made ready in a worker: what the loop needs to check and publish."""

    kind: str  # the message type: "image" or "geojson"
    author: str
    body: str  # the keys after `type`, as `WireMessage.body()` writes them
    style: str | None  # a layer's `style` tail
    reply: Any = None  # the `in_reply_to_id` the sender gave, checked on the loop


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything a worker needs besides the input: small, frozen, cheap to pickle."""

    limits: models.Limits
    max_image_size: int
    max_image_pixels: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal coming back from a worker: a value, not a pickled exception and traceback."""

    reason: str


Outcome: TypeAlias = Prepared | AnyClientMessage | Refused
# The file of a handed-over frame could not be read (removed behind the server's back).
HANDOFF_REASON = "server busy: the message could not be processed, send it again"
# A frame its dialect drops silently (QField's `exiter`), on its way back from a worker.
IGNORED = Refused("")


def init_worker(address_space: int, niceness: int) -> None:
    """Runs once in each new worker.

    Ctrl+C reaches the whole process group; the server shuts the pool down on its own, so a
    worker must not die of KeyboardInterrupt halfway through a job. The modules the worker
    forked with (pydantic, Pillow, the protocol's models) are frozen out of the collections:
    the one after each large job then walks that job's objects only (50 ms less per job).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()
    if niceness > 0:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    tune_allocator()
    if address_space > 0:
        _limit_address_space(address_space)


def _limit_address_space(limit: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_frame(text: str, rules: Rules, dialect: Dialect) -> Outcome:
    """Worker entry point: a whole frame, parsed, validated and (image, layer) made ready."""
    return _guarded(len(text), _prepare_frame, text, rules, dialect)


def run_parcel(parcel: Parcel, rules: Rules, dialect: Dialect, *, counted: bool = False) -> Outcome:
    """Worker entry point: a whole frame handed over as a file (`work.handoff`), as `run_frame`;
    `counted` when the loop already counted a layer's positions as it wrote the file."""
    try:
        data = parcel.read()
    except OSError:
        return Refused(HANDOFF_REASON)
    return _guarded(len(data), _prepare_frame, data, rules, dialect, counted)


def run_image(author: str, avatar: str | None, image_data: str, rules: Rules) -> Outcome:
    """Worker entry point: an image message the loop already validated, to be resized."""
    return _guarded(len(image_data), _prepare_image_fields, author, avatar, image_data, rules)


def _guarded(size: int, job: Callable[..., Outcome], *args: Any) -> Outcome:
    """Run a job, turning every refusal into a `Refused`; give memory back after big inputs."""
    try:
        outcome = job(*args)
    except refusals.Uncompliant as exc:
        outcome = Refused(exc.reason)
    except parsing.Ignored:
        outcome = IGNORED
    except images.ImageRejected as exc:
        outcome = Refused(str(exc))
    except MemoryError:
        outcome = Refused(MEMORY_REASON)
    # Out of the except blocks: the traceback and the objects it kept alive are gone now.
    if size > LARGE_INPUT:
        gc.collect()
        release_memory()
    return outcome


def _prepare_frame(text: str | bytes, rules: Rules, dialect: Dialect, counted: bool = False) -> Outcome:
    """A frame's text, or its UTF-8 bytes when it was handed over as a file (`work.handoff`)."""
    if not counted and parsing.sniff_type(text) == "geojson":
        # Before the parse, whose objects weigh ten times the text: a layer whose text shows
        # more positions than the budget is refused from a scan of its brackets.
        geojson.check_raw_vertices(text, rules.limits.max_geojson_vertices)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise refusals.Uncompliant(NOT_JSON_REASON) from None
    message = parse_object(data, rules.limits, dialect)
    del data
    if isinstance(message, models.GeojsonMessage):
        return _prepare_layer(message, text, rules.limits)
    if isinstance(message, models.ImageMessage):
        return _prepare_image(message, rules)
    return message


def _prepare_layer(message: models.GeojsonMessage, text: str | bytes, limits: models.Limits) -> Prepared:
    """Vertices first (cheap), then features one by one (dear), then the wire text.

    Every position is a JSON array, so a text with no more '[' than the budget cannot exceed
    it: one C-speed scan spares the walk for nearly all layers.
    """
    maximum = limits.max_geojson_vertices
    if geojson.brackets(text) > maximum:
        geojson.check_vertices(message.geojson, maximum)
    for index, feature in enumerate(message.features):
        geojson.check_feature(index, feature)
    body, style = message.body()
    return Prepared("geojson", message.author, body, style, message.in_reply_to_id)


def _prepare_image(message: models.ImageMessage, rules: Rules) -> Prepared:
    resized = _resize(message.image_data, rules)
    body, _ = message.model_copy(update={"image_data": resized}).body()
    return Prepared("image", message.author, body, None, message.in_reply_to_id)


def _prepare_image_fields(author: str, avatar: str | None, image_data: str, rules: Rules) -> Prepared:
    resized = _resize(image_data, rules)
    message = models.ImageMessage.model_construct(author=author, avatar=avatar, image_data=resized)
    body, _ = message.body()
    return Prepared("image", author, body, None)


def _resize(image_data: str, rules: Rules) -> str:
    return images.process_image(image_data, max_size=rules.max_image_size, max_pixels=rules.max_image_pixels)
