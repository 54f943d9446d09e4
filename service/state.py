"""What the app holds between requests (on `app.state`), and the dependency aliases routes use."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.ab import Experiment
from service.auth import Auth
from service.cache import ProfileCache
from service.config import Settings
from service.engine import ProfileEngine
from service.feedback import Feedback
from service.metrics import Metrics
from service.stale import StaleFallback
from service.tracing import Tracing

if TYPE_CHECKING:  # service.fleet acts on this state
    from service.fleet import Fleet


@dataclass
class ServiceState:
    settings: Settings
    engine: ProfileEngine
    cache: ProfileCache
    metrics: Metrics
    auth: Auth
    tracing: Tracing | None = None
    fallback: StaleFallback | None = None  # set in the lifespan: the stale-fallback versions (service.stale)
    retiring: set[asyncio.Task[None]] = field(default_factory=set)
    experiment: Experiment = field(default_factory=Experiment)  # the A/B challenger, if any (service.ab)
    feedback: Feedback | None = None  # set in the lifespan: QC/DCTR aggregates (service.feedback)
    fleet: Fleet | None = None  # set in the lifespan with Redis and UTPM_FLEET_SYNC (service.fleet)


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def get_state(request: Request) -> ServiceState:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, on every request
    return service_state(request)


State = Annotated[ServiceState, Depends(get_state)]
