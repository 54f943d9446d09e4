"""What the app holds between requests (on `app.state`), and the dependency aliases routes use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.cache import ProfileCache
from service.config import Settings
from service.engine import ProfileEngine
from service.metrics import Metrics


@dataclass
class ServiceState:
    settings: Settings
    engine: ProfileEngine
    cache: ProfileCache
    metrics: Metrics
    retiring: set[object] = field(default_factory=set)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]
