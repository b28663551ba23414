"""appliance.edge.vip against a real veth pair in a namespace of its own: a
claim sends the gratuitous ARP request and reply at once, then adds the
address; a release removes it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VIP = "198.18.99.1/24"

CLAIM = """
import ipaddress, json, socket
from pyroute2 import IPRoute
from appliance.edge.vip import ETH_P_ARP, Vip, garp_frames

rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
rx.bind(("vb", ETH_P_ARP))
rx.settimeout(5)
mac = open("/sys/class/net/va/address").read().strip()
iface = ipaddress.IPv4Interface(sys.argv[1])
errors = []
vip = Vip("va", socket.if_nametoindex("va"), mac, iface, errors.append)
vip.claim()
frames = [rx.recv(128)[:42] for _ in range(2)]
vip.settle()
with IPRoute() as ipr:
    held = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET, index=socket.if_nametoindex("va"))]
vip.release()
vip.close()
with IPRoute() as ipr:
    after = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET, index=socket.if_nametoindex("va"))]
print(json.dumps({"sent": [f.hex() for f in frames], "expected": [f.hex() for f in garp_frames(mac, iface.ip)],
                  "held": held, "after": after, "errors": errors}))
"""


@pytest.fixture
def veth_ns():
    ns = f"tp-vip-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "add", "va", "type", "veth", "peer", "name", "vb"],
                    ["link", "set", "va", "up"], ["link", "set", "vb", "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_a_claim_announces_at_once_then_holds_the_address_until_released(veth_ns):
    out = subprocess.run(["ip", "netns", "exec", veth_ns, sys.executable, "-c", "import sys\n" + CLAIM, VIP],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sent"] == result["expected"]          # request then reply, sender = target = the VIP
    assert result["held"] == ["198.18.99.1"] and result["after"] == [] and result["errors"] == []
