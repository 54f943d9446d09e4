"""The served arms and every change to them: the champion swapped for another bundle; a challenger
loaded, re-shared, promoted or dropped.

The admin routes call these on the replica that receives the call, and `service.fleet` calls them
on every other replica that shares its Redis. Every change is a reference swap on the event loop:
requests already running finish on the engine they started with (an engine is closed after its
last lease), so no request fails. One lock: one change at a time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from index.errors import TagIndexError
from model_export.errors import BundleError
from service.ab import Experiment
from service.engine import ProfileEngine
from service.errors import ReloadRefused, ServiceError
from service.state import ServiceState

log = logging.getLogger("utpm.service")
lock = asyncio.Lock()


class NoChallenger(ServiceError):
    status, kind = 409, "no_challenger"


def resolve_bundle(state: ServiceState, requested: str) -> Path:
    """The requested bundle directory, which must lie under the configured root."""
    root = state.settings.reload_root
    path = Path(requested)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise ReloadRefused(f"bundle {requested!r} is outside the bundle root; only bundles under it can be loaded")
    return path


def bundle_name(state: ServiceState, engine: ProfileEngine) -> str:
    """How another replica finds `engine`'s bundle: its path under the bundle root (absolute if outside)."""
    path = Path(engine.bundle.path).resolve()
    root = state.settings.reload_root
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


async def open_engine(
    state: ServiceState, requested: str, role: str, version: str | None = None, refuse: str | None = None
) -> ProfileEngine:
    """Load and check the bundle `requested` (under the bundle root) and start it; ReloadRefused, naming
    `role` ("bundle", "challenger"), when it fails its checks, is not `version` when one is given, or
    is the version `refuse`."""
    path = resolve_bundle(state, requested)
    try:
        engine = await asyncio.to_thread(ProfileEngine.load, path, state.settings)
    except (BundleError, TagIndexError, OSError, ValueError) as e:
        message = str(e).replace(str(state.settings.reload_root), "<bundle-root>")
        raise ReloadRefused(f"{role} {requested!r} refused; the current bundle keeps serving: {message}") from None
    if version is not None and engine.version != version:
        raise ReloadRefused(f"{role} {requested!r} is version {engine.version} here, not {version}")
    if engine.version == refuse:
        raise ReloadRefused(f"{role} {requested!r} is the champion's version {refuse}; an A/B needs two versions")
    engine.start(on_batch=state.metrics.batch_size.observe)
    return engine


def align_fields(state: ServiceState) -> None:
    """Every served arm accepts the fields of every other: one request body is valid for both arms of
    an A/B (a challenger trained without a field, or with a new one, would otherwise answer the same
    request with 422 that the champion answers), and each model uses the fields it knows."""
    arms = [state.engine, *([state.experiment.challenger] if state.experiment.challenger is not None else [])]
    union = {f for engine in arms for f in engine.field_names}
    for engine in arms:
        engine.ignored_fields = frozenset(union - set(engine.field_names))
        if engine.ignored_fields:
            log.info(
                "model %s leaves out the field(s) %s, which it was not trained with",
                engine.version,
                sorted(engine.ignored_fields),
            )


def retire(state: ServiceState, engine: ProfileEngine) -> None:
    """Close `engine` after its last request."""
    task = asyncio.get_running_loop().create_task(engine.retire())
    state.retiring.add(task)
    task.add_done_callback(state.retiring.discard)


async def swap_champion(state: ServiceState, new: ProfileEngine, experiment: Experiment | None = None) -> str:
    """Serve `new` as the champion (and `experiment` as the A/B, when given), retire the old one; its version."""
    old = state.engine
    if state.fallback is not None:
        state.fallback.swapping(new.version, old.version)
    state.engine = new  # the swap: new requests see the new engine from here on
    if experiment is not None:
        state.experiment = experiment
    align_fields(state)  # before the next await: no request sees the new arms with the old fields
    if state.fallback is not None:  # misses under the new version fall back to the old one's profiles
        await state.fallback.refresh(new.version, previous=old.version)
    retire(state, old)
    state.metrics.bundle_info.clear()
    state.metrics.bundle_info.labels(new.version, new.model_name).set(1)
    return old.version


async def reload(state: ServiceState, requested: str, version: str | None = None) -> tuple[str, ProfileEngine]:
    """Swap the champion for the bundle `requested` -> (the old version, the new engine)."""
    try:
        new = await open_engine(state, requested, "bundle", version)
    except ReloadRefused as e:
        state.metrics.reloads.labels("refused").inc()
        log.warning("reload refused: %s", e)
        raise
    dropped = sorted(set(state.engine.field_names) - set(new.field_names))
    old = await swap_champion(state, new)
    state.metrics.reloads.labels("ok").inc()
    log.info("reloaded bundle %s -> %s", old, new.version)
    if dropped:
        log.warning(
            "the new bundle %s does not take the field(s) %s: requests sending them get 422", new.version, dropped
        )
    return old, new


async def load_challenger(state: ServiceState, requested: str, share: float, version: str | None = None) -> None:
    """Serve the bundle `requested` to `share` of the users, replacing any challenger."""
    engine = await open_engine(state, requested, "challenger", version, refuse=state.engine.version)
    old = state.experiment.challenger
    state.experiment = Experiment(engine, share)  # the swap
    align_fields(state)
    if old is not None:
        retire(state, old)
    if state.fallback is not None:
        await state.fallback.register_challenger(engine.version)
    log.info("challenger %s loaded at share %.3f", engine.version, share)


def set_share(state: ServiceState, share: float) -> None:
    challenger = state.experiment.challenger
    if challenger is None:
        raise NoChallenger("no challenger is loaded; POST /admin/challenger loads one")
    state.experiment = Experiment(challenger, share)


async def promote(state: ServiceState) -> None:
    """The challenger becomes the champion for every user; the old champion is closed after its last request."""
    challenger = state.experiment.challenger
    if challenger is None:
        raise NoChallenger("no challenger is loaded; nothing to promote")
    old = await swap_champion(state, challenger, Experiment())  # champion and experiment in one step
    log.info("challenger %s promoted; champion %s retired", challenger.version, old)


def drop(state: ServiceState) -> None:
    """Every user back to the champion; the challenger is closed after its last request."""
    challenger = state.experiment.challenger
    if challenger is None:
        raise NoChallenger("no challenger is loaded; nothing to drop")
    state.experiment = Experiment()
    align_fields(state)
    retire(state, challenger)
    log.info("challenger %s dropped", challenger.version)
