#!/usr/bin/env python3
"""Regenerate crates/wire/proto/*.proto from the wire contract facts.

The contract (../shared/openshell-wire/contract.md) lists every message, field
number, type and label of the OpenShell 0.1 gateway API as structured text.
Typing ~1,000 field lines by hand invites renumbering mistakes, so we derive the
.proto files mechanically and keep the result in git. Run it again when the
contract changes, then review the diff:

    python3 scripts/gen-proto-from-contract.py ../shared/openshell-wire/contract.md

RPCs whose messages the contract does not spell out (sandbox-supervisor,
peer and service-exposure calls a control plane never makes) get empty
messages: the method paths must exist so the simulator can answer them the way
a real gateway does, and an empty message never misreads a field.
"""

import collections
import pathlib
import re
import sys

PKG = {"v1": "openshell.v1", "datamodel.v1": "openshell.datamodel.v1", "sandbox.v1": "openshell.sandbox.v1"}
FILE = {"v1": "openshell.proto", "datamodel.v1": "datamodel.proto", "sandbox.v1": "sandbox.proto"}
HEADER = {
    "datamodel.v1": "Shared resource types: object metadata, workspaces, providers.",
    "sandbox.v1": "Sandbox policy and configuration types.",
    "v1": "The OpenShell gateway service (protocol line 0.1) and its messages.",
}

FIELD_RE = re.compile(
    r"^- `(\d+) (optional |repeated )?(map<[\w.]+,[\w.]+>|[\w.]+) (\w+)( +\[(oneof (\w+)|secret)\])?`"
)
ENUM_RE = re.compile(r"^- enum `([\w.]+)`(?: \*\*NEW ENUM\*\*)?: (.*)$")
RESERVED_RE = re.compile(r"^- reserved numbers: (.*)$")
MSG_RE = re.compile(r"^#### `([\w.]+)`")
RPC_RE = re.compile(r"^\| `/openshell\.v1\.OpenShell/(\w+)` \| (stream )?([\w.]+) → (stream )?([\w.]+) \| ([^|]*) \|")
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "float", "double"}


def split(qualified):
    pkg, _, name = qualified.rpartition(".")
    return pkg, name


def main(contract_path, out_dir):
    text = pathlib.Path(contract_path).read_text()
    messages = collections.OrderedDict()  # qualified -> dict
    enums = collections.OrderedDict()  # qualified -> [(name, value)]
    rpcs = []
    current = None
    for line in text.splitlines():
        if m := RPC_RE.match(line):
            rpcs.append((m.group(1), bool(m.group(2)), m.group(3), bool(m.group(4)), m.group(5), m.group(6).strip()))
            continue
        if m := MSG_RE.match(line):
            current = {"fields": [], "reserved": []}
            messages[m.group(1)] = current
            continue
        if current is None:
            continue
        if m := FIELD_RE.match(line):
            num, label, typ, name, _, tag, oneof = m.groups()
            current["fields"].append(
                {"num": int(num), "label": (label or "").strip(), "type": typ, "name": name,
                 "oneof": oneof, "secret": tag == "secret"}
            )
        elif m := ENUM_RE.match(line):
            values = [tuple(v.strip().split("**")[0].strip().split("=")) for v in m.group(2).split(",")]
            enums[m.group(1)] = [(n, int(v)) for n, v in values]
        elif m := RESERVED_RE.match(line):
            current["reserved"] = [int(x) for x in m.group(1).split(",")]

    # Messages named by an RPC but not spelled out: empty on purpose (see module doc).
    for _, _, req, _, resp, _ in rpcs:
        for q in (req, resp):
            if q not in messages:
                messages[q] = {"fields": [], "reserved": [], "stub": True}

    imports = collections.defaultdict(set)

    def ref(typ, from_pkg):
        if typ in SCALARS:
            return typ
        if typ.startswith("google.protobuf."):
            imports[from_pkg].add(
                {"Timestamp": "google/protobuf/timestamp.proto", "Duration": "google/protobuf/duration.proto",
                 "Struct": "google/protobuf/struct.proto"}[typ.split(".")[-1]]
            )
            return "." + typ
        pkg, name = split(typ)
        if pkg != from_pkg:
            imports[from_pkg].add(FILE[pkg])
        return "." + PKG[pkg] + "." + name

    bodies = collections.defaultdict(list)
    for q, msg in messages.items():
        pkg, name = split(q)
        out = []
        if msg.get("stub"):
            out.append("// Payload not used by a control plane; fields intentionally omitted.")
        out.append(f"message {name} {{")
        if msg["reserved"]:
            out.append(f"  reserved {', '.join(str(n) for n in msg['reserved'])};")
        oneofs = collections.OrderedDict()
        for f in msg["fields"]:
            if f["oneof"]:
                oneofs.setdefault(f["oneof"], []).append(f)
        emitted_oneofs = set()
        for f in msg["fields"]:
            if f["oneof"]:
                if f["oneof"] in emitted_oneofs:
                    continue
                emitted_oneofs.add(f["oneof"])
                out.append(f"  oneof {f['oneof']} {{")
                for g in oneofs[f["oneof"]]:
                    out.append(f"    {ref(g['type'], pkg)} {g['name']} = {g['num']};")
                out.append("  }")
                continue
            typ = f["type"]
            if typ.startswith("map<"):
                k, v = typ[4:-1].split(",")
                decl = f"map<{ref(k, pkg)}, {ref(v, pkg)}>"
            else:
                decl = ref(typ, pkg)
            label = f["label"] + " " if f["label"] else ""
            secret = "  // secret: never log or echo" if f["secret"] else ""
            out.append(f"  {label}{decl} {f['name']} = {f['num']};{secret}")
        out.append("}")
        bodies[pkg].append("\n".join(out))
    for q, values in enums.items():
        pkg, name = split(q)
        out = [f"enum {name} {{"] + [f"  {n} = {v};" for n, v in values] + ["}"]
        bodies[pkg].append("\n".join(out))

    service = ["service OpenShell {"]
    for method, cs, req, ss, resp, auth in rpcs:
        service.append(f"  // {auth}")
        service.append(
            f"  rpc {method}({'stream ' if cs else ''}{ref(req, 'v1')}) returns ({'stream ' if ss else ''}{ref(resp, 'v1')});"
        )
    service.append("}")
    bodies["v1"].insert(0, "\n".join(service))

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for pkg, fname in FILE.items():
        head = [
            "// Generated by scripts/gen-proto-from-contract.py from the OpenShell 0.1 wire contract.",
            f"// {HEADER[pkg]}",
            "// Field numbers are the wire contract: never renumber or reuse one.",
            'syntax = "proto3";',
            "",
            f"package {PKG[pkg]};",
            "",
        ]
        head += [f'import "{i}";' for i in sorted(imports[pkg])]
        (out_dir / fname).write_text("\n".join(head) + "\n\n" + "\n\n".join(bodies[pkg]) + "\n")
    print(f"{len(messages)} messages, {len(enums)} enums, {len(rpcs)} rpcs", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/openshell-wire/contract.md",
         sys.argv[2] if len(sys.argv) > 2 else "crates/wire/proto")
