"""D-Bus errors mapped to the typed errors of imapd_ctl.core.errors."""
from __future__ import annotations

from imapd_ctl.core.errors import ActionFailed, ApiError, Unavailable


class NoSuchUnit(ActionFailed):
    pass


class JobFailed(ActionFailed):
    pass


def map_error(exc: BaseException, what: str) -> ApiError:
    """Turn a GLib/D-Bus error met while trying to `what` into a typed error a person can act
    on: NoSuchUnit, ActionFailed (systemd said no), or Unavailable (503: no answer at all)."""
    from gi.repository import Gio, GLib
    if not isinstance(exc, GLib.Error):
        return Unavailable(f"systemd is unreachable over D-Bus while trying to {what}: {exc}")
    name = Gio.DBusError.get_remote_error(exc) or ""
    message = exc.message
    if name:
        # (Gio.DBusError.strip_remote_error works on a copy in PyGObject and returns a bool.)
        prefix = f"GDBus.Error:{name}: "
        message = message[len(prefix):] if message.startswith(prefix) else message
    if name in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.FileNotFound"):
        return NoSuchUnit(f"cannot {what}: {message}")
    if name.endswith(".AccessDenied") or name.endswith(".InteractiveAuthorizationRequired"):
        return ActionFailed(f"systemd refused to {what}: permission denied ({message})")
    if name.startswith("org.freedesktop.systemd1."):
        return ActionFailed(f"systemd could not {what}: {message}")
    # Anything else (no bus, bus gone, systemd not answering, timeouts) is "unreachable".
    return Unavailable(f"systemd is unreachable over D-Bus while trying to {what}: {message or name}")
