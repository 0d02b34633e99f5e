"""Query and path parameters, each parsed by one dependency that also documents it.

The parameters stay strings so a bad value is the seed's 400 ``Invalid <name>`` (the rules are
``bus/events/schemas.py``'s); their schemas are built from the same patterns, so the document
accepts
exactly what the parsers do. A parameter given twice is ``Invalid <name>``: a proxy or a WAF may
read the first where the API would read the last; a parameter the document does not list is
``Unknown query parameter`` (the document lists them all, and a typo'd filter must not widen
a listing silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from starlette.exceptions import HTTPException

from api.errors import allowed_methods
from bus.errors import InvalidField, UnknownQueryParameter
from bus.events.schemas import (
    FILTER_PATTERN,
    LIMIT_PATTERN,
    LIST_PARAMS,
    MODULE_NAME_PATTERN,
    OPTIONAL_UUID_PATTERN,
    PAGE_PATTERN,
    RETRY_SCHEDULED_VALUES,
    SERIES,
    STATUSES,
    UUID_PATTERN,
    ListQuery,
    parse_list_query,
)
from bus.read.cursors import CURSOR_PATTERN


def _only_once(request: Request, names: tuple[str, ...]) -> None:
    """Each of ``names`` at most once, and no other parameter: the document lists every one."""
    for name, _ in request.query_params.multi_items():
        if name not in names:
            raise UnknownQueryParameter()
    for name in names:
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidField(name)


def _param(description: str, **schema: Any) -> Any:
    return Query(description=description, json_schema_extra=schema)


def _filter(description: str) -> Any:
    return _param(f"{description}; empty: no filter", pattern=FILTER_PATTERN)


_TENANT = Annotated[
    str,
    _param(
        "UUID of the tenant (optional for system admins and in auth context); empty: none",
        pattern=OPTIONAL_UUID_PATTERN,
    ),
]


async def tenant_query(request: Request, tenant_id: _TENANT = "") -> str | None:
    """The whole query of a call that takes only ``tenant_id``: the tenant asked for, or None
    (which tenant a call acts in is ``bus.auth``'s)."""
    _only_once(request, ("tenant_id",))
    return tenant_id or None


_MODULE_OR_NONE = f"^({MODULE_NAME_PATTERN.strip('^$')})?$"


@dataclass(frozen=True, slots=True)
class HeldKeysQuery:
    tenant_id: str | None
    target_module: str | None
    limit: str | None


async def held_keys_query(
    request: Request,
    tenant_id: _TENANT = "",
    target_module: Annotated[
        str, _param("only this module's held keys; empty: every module", pattern=_MODULE_OR_NONE)
    ] = "",
    limit: Annotated[
        str, _param("at most this many, 1 to 100; empty: 100", pattern=r"^([1-9][0-9]?|100)?$")
    ] = "",
) -> HeldKeysQuery:
    """``GET /system/held-keys``'s query (checked by ``bus.delivery.control``)."""
    _only_once(request, ("tenant_id", "target_module", "limit"))
    return HeldKeysQuery(tenant_id or None, target_module or None, limit or None)


async def stats_query(
    request: Request,
    tenant_id: _TENANT = "",
    series: Annotated[
        str,
        _param(
            "`minute`: add `series`, the handler attempts per minute and target module by "
            "outcome over the last 60 minutes; empty: none",
            enum=["", *SERIES],
        ),
    ] = "",
) -> StatsQuery:
    """The stats' query: the tenant asked for, and the series asked for."""
    _only_once(request, ("tenant_id", "series"))
    if series and series not in SERIES:
        raise InvalidField("series")
    return StatsQuery(tenant_id or None, series or None)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    tenant_id: str | None
    series: str | None


async def list_tenant(tenant_id: _TENANT = "") -> str | None:
    """The list's ``tenant_id`` (checked with the rest of its query by :func:`list_query`)."""
    return tenant_id or None


async def list_query(
    request: Request,
    event_type: Annotated[str, _filter("exact event type")] = "",
    source_module: Annotated[str, _filter("exact source module")] = "",
    target_module: Annotated[str, _filter("exact target module")] = "",
    status: Annotated[str, _param("pending, processed or failed", enum=["", *STATUSES])] = "",
    entity_type: Annotated[str, _filter("exact entity type")] = "",
    retry_scheduled: Annotated[
        str,
        _param(
            "`true`: failed events with an automatic retry to come; `false`: every other "
            "(with `status=failed`: the events that gave up); empty: no filter",
            enum=["", *RETRY_SCHEDULED_VALUES],
        ),
    ] = "",
    page: Annotated[str, _param("page number, from 1 (default 1)", pattern=PAGE_PATTERN)] = "",
    limit: Annotated[
        str, _param("items per page, 1 to 1000 (default 100)", pattern=LIMIT_PATTERN)
    ] = "",
    cursor: Annotated[
        str,
        _param(
            "the `next_cursor` of the page before, to read the page after it (instead of "
            "`page`: never both); give the same filters again (`limit` may change)",
            pattern=CURSOR_PATTERN,
        ),
    ] = "",
) -> ListQuery:
    """The list's filters and page."""
    values = {
        "event_type": event_type,
        "source_module": source_module,
        "target_module": target_module,
        "status": status,
        "entity_type": entity_type,
        "retry_scheduled": retry_scheduled,
        "page": page,
        "limit": limit,
        "cursor": cursor,
    }
    _only_once(request, LIST_PARAMS)
    return parse_list_query(values)


async def event_id_path(
    request: Request,
    event_id: Annotated[
        str,
        Path(
            description="the event's UUID, 8-4-4-4-12 (any case); any other id is not found",
            json_schema_extra={"pattern": UUID_PATTERN},
        ),
    ],
) -> str:
    """The path's event id as given (``bus.events.schemas.event_uuid`` answers 404 for one that
    is no canonical UUID). A method a concrete path does not take is 405 with its ``Allow``:
    ``GET …/replay`` or ``PUT …/batch`` names an operation that exists, not an event called
    ``replay``."""
    if request.method not in allowed_methods(request):
        raise HTTPException(405)
    return event_id


@dataclass(frozen=True, slots=True)
class EndpointsQuery:
    tenant_id: str | None
    target_module: str | None


async def endpoints_query(
    request: Request,
    tenant_id: _TENANT = "",
    target_module: Annotated[
        str, _param("only this module's endpoints; empty: every module", pattern=_MODULE_OR_NONE)
    ] = "",
) -> EndpointsQuery:
    """``GET /system/endpoints``'s query (checked by ``bus.webhooks.endpoints``)."""
    _only_once(request, ("tenant_id", "target_module"))
    return EndpointsQuery(tenant_id or None, target_module or None)


@dataclass(frozen=True, slots=True)
class DeliveriesQuery:
    tenant_id: str | None
    status: str | None
    limit: str | None


async def deliveries_query(
    request: Request,
    tenant_id: _TENANT = "",
    status: Annotated[
        str,
        _param(
            "only deliveries in this status: acknowledged, failed or waiting; empty: all",
            pattern="^(acknowledged|failed|waiting)?$",
        ),
    ] = "",
    limit: Annotated[
        str, _param("how many, newest first: 1 to 100 (20)", pattern=r"^([1-9][0-9]?|100)?$")
    ] = "",
) -> DeliveriesQuery:
    """``GET /system/endpoints/{id}/deliveries``'s query (checked by ``bus.webhooks``)."""
    _only_once(request, ("tenant_id", "status", "limit"))
    return DeliveriesQuery(tenant_id or None, status or None, limit or None)


async def endpoint_id_path(
    endpoint_id: Annotated[
        str,
        Path(
            description="the endpoint's UUID, 8-4-4-4-12 (any case); any other id is not found",
            json_schema_extra={"pattern": UUID_PATTERN},
        ),
    ],
) -> str:
    """The path's endpoint id as given (``bus.webhooks.endpoints`` answers 404 for one that is
    no canonical UUID, as for an unknown one)."""
    return endpoint_id


TenantQuery = Annotated[str | None, Depends(tenant_query)]
EndpointsQueryDep = Annotated[EndpointsQuery, Depends(endpoints_query)]
EndpointIdPath = Annotated[str, Depends(endpoint_id_path)]
DeliveriesQueryDep = Annotated[DeliveriesQuery, Depends(deliveries_query)]
HeldKeysQueryDep = Annotated[HeldKeysQuery, Depends(held_keys_query)]
EventIdPath = Annotated[str, Depends(event_id_path)]
StatsQueryDep = Annotated[StatsQuery, Depends(stats_query)]
ListTenant = Annotated[str | None, Depends(list_tenant)]
ListQueryDep = Annotated[ListQuery, Depends(list_query)]
