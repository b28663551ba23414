"""Writes roles/twinpath/meta/argument_specs.yml: the role's own variables
(ROLE_VARIABLES, the one place they are described) and `twinpath_config`,
whose options are generated from the daemon's config model
(appliance.core.config), so the spec cannot drift from what the daemon
accepts. tests/unit/test_ansible_role.py fails when the file is stale.

    .venv/bin/python ansible/argument_specs.py          # rewrite it
    .venv/bin/python ansible/argument_specs.py --check  # exit 1 if stale

What the spec cannot say (ranges, patterns, cross-references) `twinpath
check-config` says, on the candidate file, before it replaces the running
config.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from appliance.core.config import Config

SPEC_PATH = Path(__file__).parent / "roles" / "twinpath" / "meta" / "argument_specs.yml"
JSON_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "array": "list",
              "object": "dict"}

# The role's own variables; their defaults are defaults/main.yml's (the test holds them equal).
ROLE_VARIABLES = {
    "twinpath_wheel": {"type": "path", "required": True,
                       "description": "The twinpath wheel to install, on the controller (make wheel)."},
    "twinpath_wheelhouse": {"type": "path", "default": "{{ twinpath_wheel | dirname }}",
                            "description": "The controller directory of the wheels the release needs (make wheel "
                                           "puts the product's and every dependency's in dist/): gateways reach "
                                           "no package index."},
    "twinpath_prefix": {"type": "path", "default": "/opt/twinpath",
                        "description": "Releases live in <prefix>/releases/<wheel name>/venv; <prefix>/venv links to "
                                       "the one that runs."},
    "twinpath_keep_releases": {"type": "int", "default": 3,
                               "description": "Releases kept on a host, the running one and the one before it "
                                              "included (rollback needs the one before)."},
    "twinpath_config_dir": {"type": "path", "default": "/etc/twinpath",
                            "description": "twinpath.toml, its previous version and the heartbeat key file."},
    "twinpath_unit_dir": {"type": "path", "default": "/etc/systemd/system",
                          "description": "Where twinpath.service is installed."},
    "twinpath_service_manager": {"type": "str", "default": "systemd", "choices": ["systemd", "direct"],
                                 "description": "systemd runs the unit; direct starts the daemon with "
                                                "start-stop-daemon, for a host whose PID 1 is not systemd."},
    "twinpath_pid_file": {"type": "path", "default": "/run/twinpath/twinpath.pid",
                          "description": "direct: start-stop-daemon's pid file."},
    "twinpath_log_file": {"type": "path", "default": "/var/log/twinpath.jsonl",
                          "description": "direct: where the daemon's JSON log lines go (systemd: the journal)."},
    "twinpath_unit_source": {"type": "path",
                             "default": "{{ role_path }}/../../../packaging/systemd/twinpath.service",
                             "description": "The unit the role installs (the product's own), its paths rewritten "
                                            "to twinpath_prefix and twinpath_config_dir."},
    "twinpath_packages": {"type": "list", "elements": "str",
                          "default": ["python3-bpfcc", "python3-venv", "linux-headers-amd64", "iproute2"],
                          "description": "Debian packages BCC and the daemon need."},
    "twinpath_apt_cache_valid_time": {"type": "int", "default": 86400,
                                      "description": "Seconds an apt cache stays fresh before the role updates it."},
    "twinpath_kernel_header_links": {"type": "bool", "default": True,
                                     "description": "Link /lib/modules/<kernel>/{build,source} to Debian's generic "
                                                    "amd64 headers when the running kernel has none."},
    "twinpath_heartbeat_keys": {"type": "str", "default": "", "no_log": True,
                                "description": "The heartbeat key file's content (lines 'ID HEX32'), from a vaulted "
                                               "variable; installed mode 0600 as <config_dir>/heartbeat.keys. Empty: "
                                               "none. Set twinpath_config.heartbeat.key_file to that path to use it."},
    "twinpath_health_timeout_s": {"type": "int", "default": 90,
                                  "description": "How long the health gate waits for the daemon to be healthy."},
    "twinpath_health_quiet_s": {"type": "int", "default": 10,
                                "description": "The health gate wants no failover in the last this many seconds."},
}


def _options(schema: dict, defs: dict) -> dict:
    """argument_specs options for a JSON schema object."""
    required = set(schema.get("required", ()))
    return {name: _option(prop, defs, name in required) for name, prop in schema["properties"].items()}


def _resolve(prop: dict, defs: dict) -> dict:
    if "$ref" in prop:
        return {**defs[prop["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in prop.items() if k != "$ref"}}
    variants = [v for v in prop.get("anyOf", ()) if v.get("type") != "null"]
    if len(variants) == 1:   # X | None: optional X
        return {**_resolve(variants[0], defs), **{k: v for k, v in prop.items() if k != "anyOf"}}
    return prop


def _option(prop: dict, defs: dict, required: bool) -> dict:
    prop = _resolve(prop, defs)
    out: dict = {}
    if "enum" in prop:
        out["type"], out["choices"] = "str", list(prop["enum"])
    else:   # no type: the model takes several (a port or a "LO-HI" range)
        out["type"] = JSON_TYPES[prop["type"]] if "type" in prop else "raw"
    if required:
        out["required"] = True
    words = [prop.get("description", "").strip().rstrip(".")]
    if prop.get("default") is not None and not isinstance(prop["default"], dict | list):
        words.append(f"the daemon's default: {prop['default']!r}")
    out["description"] = "; ".join(w for w in words if w) or prop.get("title", "")
    if out["type"] == "dict" and "properties" in prop:
        out["options"] = _options(prop, defs)
    if out["type"] == "list":
        items = _resolve(prop["items"], defs)
        if "properties" in items:
            out["elements"], out["options"] = "dict", _options(items, defs)
        else:
            out["elements"] = JSON_TYPES[items["type"]]
    return out


def spec() -> dict:
    schema = Config.model_json_schema()
    config = {"type": "dict", "required": True, "options": _options(schema, schema["$defs"]),
              "description": "The daemon's config (examples/twinpath.toml) as YAML, rendered to "
                             "<config_dir>/twinpath.toml after `twinpath check-config` accepted it."}
    return {"argument_specs": {"main": {
        "short_description": "Install, configure and run twinpath on a colo gateway",
        "description": ["Installs the Debian packages and a twinpath wheel into a release venv, writes the "
                        "config from typed variables (checked by twinpath check-config before it replaces the "
                        "running one) and the heartbeat key file, installs the systemd unit and runs the "
                        "daemon. A config change the daemon can apply live is reloaded (zero loss); any other "
                        "restarts it (fail static: the data path forwards meanwhile)."],
        "options": {**ROLE_VARIABLES, "twinpath_config": config}}}}


class _Dumper(yaml.SafeDumper):
    """Indents a list under its key, as yamllint (ansible-lint) wants it."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def render() -> str:
    return ("---\n# Generated by ansible/argument_specs.py from the daemon's config model: do not edit.\n"
            + yaml.dump(spec(), Dumper=_Dumper, sort_keys=False, width=110))


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
            print(f"{SPEC_PATH} is stale: run .venv/bin/python ansible/argument_specs.py", file=sys.stderr)
            return 1
        return 0
    SPEC_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
