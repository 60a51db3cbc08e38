"""OCI lifecycle hooks: each gets the container's state JSON on its stdin."""

from __future__ import annotations

import json
import os

from berth.errors import BerthError

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FATAL_PHASES = {"prestart", "createRuntime", "createContainer", "startContainer"}


class HookError(BerthError):
    """A hook whose failure stops the container's creation or start."""


def run(config: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
    """Run every hook of ``phase`` in order; failures of fatal phases raise HookError."""
    hooks = (config.get("hooks") or {}).get(phase) or []
    if not hooks:
        return
    import subprocess

    payload = json.dumps(state).encode()
    for hook in hooks:
        path = hook["path"]
        args = hook.get("args") or [path]
        env = {}
        for item in hook.get("env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        timeout = hook.get("timeout")
        try:
            result = subprocess.run(
                args,
                executable=path,
                input=payload,
                env=env,
                timeout=timeout,
                capture_output=True,
                check=False,
            )
            failure = (
                f"exited with status {result.returncode}: "
                + result.stderr.decode(errors="replace").strip()
                if result.returncode != 0
                else ""
            )
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout}s"
        except OSError as exc:
            failure = f"could not run: {exc.strerror}"
        if failure:
            message = f"{phase} hook {path} {failure}"
            if phase in FATAL_PHASES:
                raise HookError(message)
            from berth import log

            log.warning(message)


def state_payload(
    container_id: str, status: str, pid: int, bundle: str, annotations: dict[str, str]
) -> dict[str, Any]:
    from berth.runtime.spec import OCI_VERSION

    payload: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": container_id,
        "status": status,
        "bundle": os.path.abspath(bundle),
    }
    if pid:
        payload["pid"] = pid
    if annotations:
        payload["annotations"] = annotations
    return payload
