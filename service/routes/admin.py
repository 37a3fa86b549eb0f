"""Operator endpoints (need API_KEY; absent without one): reload now, list store versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from core.store import StoreError
from service.deps import ManagerDep, require_admin
from service.schemas import error_responses

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 404),
)


@router.post("/reload", summary="Check the store now and swap to its current version if it passes")
async def reload(manager: ManagerDep) -> dict[str, Any]:
    outcome = await manager.refresh(force=True)
    return {"served_version": outcome.served, "changed": outcome.changed, "error": outcome.error}


@router.get("/versions", summary="Versions in the store with their metrics; which is current and served")
async def versions(manager: ManagerDep) -> dict[str, Any]:
    store = manager.store
    served = manager.current.version if manager.current else None
    rows = []
    for version in store.versions():
        row: dict[str, Any] = {"version": version, "served": version == served}
        try:
            meta = store.read_metadata(version)
            row.update(
                created_at=meta.created_at.isoformat(),
                validation_accuracy=meta.validation.accuracy if meta.validation else None,
                test_accuracy=meta.test.accuracy if meta.test else None,
                artifacts=meta.artifacts,
            )
        except StoreError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return {
        "name": store.name,
        "current": store.current_version(),
        "pinned": manager.pinned,
        "served": served,
        "versions": rows,
    }
