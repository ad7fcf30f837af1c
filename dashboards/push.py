"""Push the committed dashboard JSON (``dashboards/json/*.json``) to a Grafana over its HTTP API.

Uses `grafana-client <https://pypi.org/project/grafana-client/>`_: finds or creates the folder
(``folder``, uid ``salvage``), then ``POST /api/dashboards/db`` with ``overwrite: true`` for every
dashboard, so a push is idempotent and keeps each dashboard's uid. The token (a Grafana service
account token) comes from the argument or env ``GRAFANA_TOKEN``; it is never printed or logged, and
error messages never include it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

JSON_DIR = Path(__file__).resolve().parent / "json"
FOLDER_UID = "salvage"

__all__ = ["JSON_DIR", "dashboard_files", "push_dashboards"]


def dashboard_files(json_dir: Path = JSON_DIR) -> list[Path]:
    return sorted(Path(json_dir).glob("*.json"))


def push_dashboards(
    url: str,
    token: str | None = None,
    folder: str = "Salvage",
    *,
    json_dir: Path = JSON_DIR,
    timeout: float = 10.0,
) -> list[str]:
    """Push every committed dashboard to the Grafana at ``url``; return the pushed dashboards'
    URLs (as Grafana reports them; the uid when it does not)."""
    from grafana_client import GrafanaApi

    token = token if token is not None else os.environ.get("GRAFANA_TOKEN") or None
    files = dashboard_files(json_dir)
    if not files:
        raise FileNotFoundError(f"no dashboard JSON under {json_dir}")
    api = GrafanaApi.from_url(url.rstrip("/"), credential=token, timeout=timeout)
    folder_uid = _ensure_folder(api, folder)
    pushed: list[str] = []
    for path in files:
        dashboard = json.loads(path.read_text())
        dashboard.pop("id", None)  # Grafana matches on uid; a foreign id would conflict
        res = api.dashboard.update_dashboard(
            {
                "dashboard": dashboard,
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "salvage dashboards push",
            }
        )
        pushed.append((res or {}).get("url") or dashboard.get("uid") or path.stem)
    return pushed


def _ensure_folder(api, title: str) -> str:
    for f in api.folder.get_all_folders() or []:
        if f.get("title") == title or f.get("uid") == FOLDER_UID:
            return f["uid"]
    return api.folder.create_folder(title, uid=FOLDER_UID)["uid"]
