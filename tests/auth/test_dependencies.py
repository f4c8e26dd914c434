"""The FastAPI dependencies in a wrapped app: ``current_principal``, ``require(permission)``,
per-resource grants through ``resource_param``, and API-key scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from starlette.testclient import TestClient

from auth.http_harness import Wrapped, assert_auth_problem, bearer, wrapped
from auth.service_harness import auth_config
from bastion import current_principal, require
from bastion.http.principal import Principal

ROLES = {"project_editor": ["projects:edit", "projects:read"]}

CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
OrderWriter = Annotated[Principal, Depends(require("orders:write"))]
ProjectEditor = Annotated[Principal, Depends(require("projects:edit", resource_param="project_id"))]


def make_api() -> FastAPI:
    api = FastAPI()

    @api.get("/whoami")
    async def whoami(principal: CurrentPrincipal) -> dict[str, object]:
        return {"subject": principal.subject, "method": principal.method}

    @api.post("/orders")
    async def write_order(principal: OrderWriter) -> dict[str, str]:
        return {"by": principal.subject}

    @api.put("/projects/{project_id}")
    async def edit_project(project_id: int, principal: ProjectEditor) -> dict[str, object]:
        return {"project": project_id, "by": principal.subject}

    return api


async def _headers(w: Wrapped, username: str, *roles: str) -> dict[str, str]:
    return bearer(await w.token(username, *roles))


async def test_current_principal(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_api()) as w:
        user_id = await w.user("alice@example.com")
        token = (await w.login("alice@example.com"))["access_token"]
        response = await w.client.get("/whoami", headers=bearer(token))
        assert response.status_code == 200
        assert response.json() == {"subject": user_id, "method": "bearer"}
        assert_auth_problem(await w.client.get("/whoami"), 401, "authentication_required")


async def test_require_a_permission(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_api(), auth_config(roles=ROLES)) as w:
        cases = [
            ("admin", await _headers(w, "admin@example.com", "admin"), 200, None),
            ("operator", await _headers(w, "operator@example.com", "operator"), 200, None),
            ("viewer", await _headers(w, "viewer@example.com", "viewer"), 403, "permission_denied"),
            ("no-roles", await _headers(w, "nobody@example.com"), 403, "permission_denied"),
            ("anonymous", {}, 401, "authentication_required"),
        ]
        for id_, headers, status, code in cases:
            response = await w.client.post("/orders", headers=headers)
            if code is None:
                assert response.status_code == status, (id_, response.text)
            else:
                assert_auth_problem(response, status, code)
        denied = [event for event in w.audit.events if event.kind == "access.denied"]
        assert len(denied) == 2
        assert {event.detail["permission"] for event in denied} == {"orders:write"}


async def test_require_on_a_resource_uses_the_grants_on_that_resource(tmp_path: Path) -> None:
    async with wrapped(tmp_path, make_api(), auth_config(roles=ROLES)) as w:
        await w.user("pm@example.com")
        headers = bearer((await w.login("pm@example.com"))["access_token"])
        assert_auth_problem(
            await w.client.put("/projects/42", headers=headers), 403, "permission_denied"
        )
        await w.admin.grant("pm@example.com", "project_editor", resource="projects:42")
        allowed = await w.client.put("/projects/42", headers=headers)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["project"] == 42
        for other in ("43", "420", "4"):
            response = await w.client.put(f"/projects/{other}", headers=headers)
            assert_auth_problem(response, 403, "permission_denied")
        # The grant names projects only: it is no global permission.
        assert_auth_problem(
            await w.client.post("/orders", headers=headers), 403, "permission_denied"
        )
        await w.admin.revoke("pm@example.com", "project_editor", resource="projects:42")
        assert_auth_problem(
            await w.client.put("/projects/42", headers=headers), 403, "permission_denied"
        )
        # A global role that covers the permission works on every project.
        admin = await _headers(w, "admin@example.com", "admin")
        assert (await w.client.put("/projects/43", headers=admin)).status_code == 200
        assert_auth_problem(await w.client.put("/projects/43"), 401, "authentication_required")


@pytest.mark.parametrize(
    ("id_", "scopes", "orders", "project"),
    [
        ("unscoped", [], 200, 200),
        ("orders-write", ["orders:write"], 200, 403),
        ("orders-read", ["orders:read"], 403, 403),
        ("projects-only", ["projects:*"], 403, 200),
    ],
)
async def test_api_key_scopes_restrict(
    tmp_path: Path, id_: str, scopes: list[str], orders: int, project: int
) -> None:
    async with wrapped(tmp_path, make_api(), auth_config(roles=ROLES)) as w:
        await w.user("robot@example.com", "admin")
        key = (await w.admin.create_api_key("robot@example.com", scopes=scopes)).key
        for headers in ({"X-API-Key": key}, bearer(key)):
            response = await w.client.post("/orders", headers=headers)
            assert response.status_code == orders, response.text
            if orders == 403:
                assert_auth_problem(response, 403, "permission_denied")
            response = await w.client.put("/projects/7", headers=headers)
            assert response.status_code == project, response.text


def test_require_refuses_a_permission_no_resource_can_grant() -> None:
    with pytest.raises(ValueError, match="resource"):
        require("*:edit", resource_param="project_id")
    with pytest.raises(ValueError, match="permission"):
        require("not a permission")


def test_dependencies_outside_a_wrapped_app_fail_loudly() -> None:
    with (
        TestClient(make_api()) as client,
        pytest.raises(RuntimeError, match="wrapped by Bastion"),
    ):
        client.get("/whoami")
