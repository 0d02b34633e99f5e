"""The seed's examples ("System Events API"), copied as data: what the API must answer."""

from __future__ import annotations

from typing import Any

SEED_LIST_RESPONSE: dict[str, Any] = {
    "success": True,
    "message": "Events retrieved successfully",
    "events": [
        {
            "id": "event-uuid-1",
            "tenant_id": "tenant-uuid",
            "event_type": "inventory_updated",
            "source_module": "inventory",
            "target_module": "warehouse",
            "entity_type": "inventory_item",
            "entity_id": "item-uuid-1",
            "event_data": {
                "previous_quantity": 100,
                "new_quantity": 95,
                "warehouse_id": "warehouse-uuid-1",
            },
            "status": "processed",
            "retry_count": 0,
            "created_at": "2023-04-01T10:00:00Z",
            "processed_at": "2023-04-01T10:01:00Z",
            "error_message": None,
        },
        {
            "id": "event-uuid-2",
            "tenant_id": "tenant-uuid",
            "event_type": "delivery_assigned",
            "source_module": "logistics",
            "target_module": "notifications",
            "entity_type": "delivery",
            "entity_id": "delivery-uuid-1",
            "event_data": {
                "driver_id": "driver-uuid-1",
                "delivery_date": "2023-04-05T09:00:00Z",
            },
            "status": "pending",
            "retry_count": 0,
            "created_at": "2023-04-01T11:30:00Z",
            "processed_at": None,
            "error_message": None,
        },
    ],
    "page": 1,
    "limit": 100,
    "total": 2,
}

SEED_PUBLISH_RESPONSE: dict[str, Any] = {
    "success": True,
    "message": "Event published successfully",
    "event": {
        "id": "event-uuid-new",
        "tenant_id": "tenant-uuid",
        "event_type": "inventory_updated",
        "source_module": "inventory",
        "target_module": "warehouse",
        "entity_type": "inventory_item",
        "entity_id": "item-uuid-1",
        "event_data": {
            "previous_quantity": 100,
            "new_quantity": 95,
            "warehouse_id": "warehouse-uuid-1",
        },
        "status": "pending",
        "retry_count": 0,
        "created_at": "2023-04-01T15:00:00Z",
        "processed_at": None,
        "error_message": None,
    },
}

SEED_UPDATE_BODY: dict[str, Any] = {
    "status": "processed",
    "processed_at": "2023-04-01T15:05:00Z",
    "error_message": None,
}

SEED_UPDATED_RESPONSE: dict[str, Any] = {
    "success": True,
    "message": "Event updated successfully",
    "event": {
        **SEED_LIST_RESPONSE["events"][1],
        "status": "processed",
        "processed_at": "2023-04-01T15:05:00Z",
    },
}

SEED_FAILED_RESPONSE: dict[str, Any] = {
    "success": True,
    "message": "Event updated successfully",
    "event": {
        **SEED_LIST_RESPONSE["events"][1],
        "status": "failed",
        "retry_count": 1,
        "processed_at": None,
        "error_message": "Target module unavailable",
    },
}
