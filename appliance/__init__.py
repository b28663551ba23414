"""twinpath: the failover appliance's daemon and command line."""
from importlib import metadata

try:
    # What the installed wheel says; a health gate compares it with the release it installed.
    __version__ = metadata.version("twinpath")
except metadata.PackageNotFoundError:   # a checkout that was never installed
    __version__ = "unknown"
