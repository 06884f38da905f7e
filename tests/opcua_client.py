#!/usr/bin/env python3
"""A PLC's side of inspectd's OPC UA server, through a real client library (asyncua).

    python3 tests/opcua_client.py URL --ns-uri urn:inspectd:DEVICE [login/security] ACTION...

Actions, run in order on one session, each printing one JSON line:
  browse            the Inspection object's children: browse name -> node id, class, type
  trigger:PART      calls Trigger(PART) by its documented node id; the five outputs
  read              every variable, read by its documented node id (ns=N;s=Inspection.NAME)
  wait-ready:BOOL   polls Ready until it reads BOOL (true/false)
  sleep:SECONDS
Login: --user NAME --password PW (anonymous without). Security: --cert C.der --key K.pem
--server-cert S.der [--app-uri URI] for Basic256Sha256 Sign&Encrypt (None without).
A failed connect prints {"action": "connect", "error": ...} and exits 3.
Used by tests/opcua.rs and examples/plc_latency.rs (asyncua==2.1.0, installed by .ci/run).
"""

import argparse
import asyncio
import json
import sys
import time

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

VARIABLES = [
    "Ready",
    "LastVerdict",
    "LastLabel",
    "LastConfidence",
    "LastPartId",
    "LastSeq",
    "LatencyMs",
    "Heartbeat",
    "ErrorCode",
]


def emit(obj):
    print(json.dumps(obj), flush=True)


async def run(a):
    client = Client(a.url, timeout=a.timeout)
    if a.app_uri:
        client.application_uri = a.app_uri
    if a.user:
        client.set_user(a.user)
        client.set_password(a.password)
    if a.cert:
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=a.cert,
            private_key=a.key,
            server_certificate=a.server_cert,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    try:
        await client.connect()
    except Exception as e:  # any refusal: what the test asserts on
        emit({"action": "connect", "error": f"{type(e).__name__}: {e}"})
        return 3
    try:
        ns = await client.get_namespace_index(a.ns_uri)
        obj = client.get_node(ua.NodeId("Inspection", ns))
        for act in a.actions:
            if act == "browse":
                # Found by browsing Objects, as a PLC programmer's tool shows the tree.
                found = None
                for c in await client.nodes.objects.get_children():
                    if (await c.read_browse_name()) == ua.QualifiedName("Inspection", ns):
                        found = c
                if found is None:
                    emit({"action": "browse", "error": "no Inspection object under Objects"})
                    return 5
                children = {}
                for c in await found.get_children():
                    name = (await c.read_browse_name()).Name
                    cls = await c.read_node_class()
                    entry = {"node_id": c.nodeid.to_string(), "class": cls.name}
                    if cls == ua.NodeClass.Variable:
                        entry["type"] = (await c.read_data_type_as_variant_type()).name
                    children[name] = entry
                emit({"action": "browse", "ns": ns, "object": found.nodeid.to_string(),
                      "children": children})
            elif act.startswith("trigger:"):
                part = act[len("trigger:"):]
                t0 = time.perf_counter()
                out = await obj.call_method(ua.NodeId("Inspection.Trigger", ns),
                                            ua.Variant(part, ua.VariantType.String))
                ms = (time.perf_counter() - t0) * 1000.0
                emit({"action": "trigger", "part_id": part, "outputs": out, "call_ms": ms})
            elif act == "read":
                values = {}
                for name in VARIABLES:
                    node = client.get_node(f"ns={ns};s=Inspection.{name}")
                    values[name] = await node.read_value()
                emit({"action": "read", "values": values})
            elif act.startswith("wait-ready:"):
                want = act.split(":", 1)[1] == "true"
                node = client.get_node(f"ns={ns};s=Inspection.Ready")
                deadline = time.monotonic() + a.timeout
                while await node.read_value() != want:
                    if time.monotonic() > deadline:
                        emit({"action": act, "error": "timed out"})
                        return 4
                    await asyncio.sleep(0.05)
                emit({"action": act})
            elif act.startswith("sleep:"):
                await asyncio.sleep(float(act.split(":", 1)[1]))
                emit({"action": act})
            else:
                emit({"action": act, "error": "unknown action"})
                return 2
    finally:
        await client.disconnect()
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ns-uri", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-cert")
    p.add_argument("--app-uri")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("actions", nargs="+")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
