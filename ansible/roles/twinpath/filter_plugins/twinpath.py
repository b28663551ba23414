"""Filters of the twinpath role.

twinpath_toml        the daemon's config (a dict) as TOML, by tomli_w
twinpath_unhealthy   what keeps `twinpath status --json` from passing the health gate
"""
from __future__ import annotations

import tomli_w


def twinpath_toml(config: dict) -> str:
    """Ansible hands over its own str and dict subclasses; tomli_w wants the
    plain types."""
    return tomli_w.dumps(_plain(config))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"{value!r} ({type(value).__name__}) has no TOML form")


def twinpath_unhealthy(status: dict, quiet_s: float, version: str | None = None) -> list[str]:
    """Every reason the daemon is not healthy, [] when it is: the version
    running (when given), every link fresh, every class on its preferred link
    (on a gateway of an HA pair: the pair healthy instead, since a standby's
    classes do not carry orders: a settled role, the witness reachable, the
    peer answering on every path), and no failover in the last quiet_s
    seconds."""
    problems = []
    daemon = status.get("daemon", {})
    if version is not None and daemon.get("version") != version:
        problems.append(f"daemon runs version {daemon.get('version')!r}, not {version!r}")
    for name, link in status.get("links", {}).items():
        if link.get("state") != "up":
            problems.append(f"link {name} is {link.get('state')}")
    pair = status.get("pair")
    for name, cls in status.get("classes", {}).items():
        if pair is None and cls.get("link") != cls.get("preferred"):
            problems.append(f"class {name} is on {cls.get('link')}, not its preferred {cls.get('preferred')}")
        age = cls.get("last_failover_age_s")
        if age is not None and age < quiet_s:
            problems.append(f"class {name} failed over {age} s ago (cause {cls.get('last_cause')})")
    if pair is not None:
        if pair.get("role") not in ("active", "standby") or not pair.get("confirmed"):
            problems.append(f"pair role is {pair.get('role')}{'' if pair.get('confirmed') else ' (unconfirmed)'}")
        if not pair.get("witness", {}).get("reachable"):
            problems.append("the witness is unreachable")
        dead = [p for p, state in pair.get("peer_paths", {}).items() if state != "fresh"]
        if dead:
            problems.append(f"peer paths not fresh: {', '.join(dead)}")
    return problems


class FilterModule:
    def filters(self):
        return {"twinpath_toml": twinpath_toml, "twinpath_unhealthy": twinpath_unhealthy}
