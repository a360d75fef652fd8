#!/usr/bin/env python3
"""Compare our .proto files with the descriptors shipped in the official SDK.

The SDK (PyPI openshell==0.1.5, written by the OpenShell authors) is the
independent reference: every message we define must agree with it on each
field's number, name, type, label and oneof membership, every enum value must
match, and every RPC path must have the same streaming shape. Messages we
deliberately leave empty (never used by a control plane) only need to exist.

Usage: compare_descriptors.py OUR_DESCRIPTOR_SET.bin
"""
import sys

from google.protobuf import descriptor_pb2
from openshell._proto import datamodel_pb2, openshell_pb2, sandbox_pb2


def index(files):
    msgs, enums, methods = {}, {}, {}
    for f in files:
        pkg = f.package
        for m in f.message_type:
            msgs[f"{pkg}.{m.name}"] = m
        for e in f.enum_type:
            enums[f"{pkg}.{e.name}"] = e
        for s in f.service:
            for meth in s.method:
                methods[f"/{pkg}.{s.name}/{meth.name}"] = meth
    return msgs, enums, methods


def sdk_files():
    out = []
    for mod in (datamodel_pb2, sandbox_pb2, openshell_pb2):
        fd = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fd)
        out.append(fd)
    return out


def main(path):
    ours = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read()).file
    our_msgs, our_enums, our_methods = index([f for f in ours if f.package.startswith("openshell.")])
    ref_msgs, ref_enums, ref_methods = index(sdk_files())
    problems = []
    checked_fields = 0
    for name, msg in our_msgs.items():
        ref = ref_msgs.get(name)
        if ref is None:
            problems.append(f"message {name} does not exist in the SDK")
            continue
        ref_fields = {f.number: f for f in ref.field}
        for f in msg.field:
            r = ref_fields.get(f.number)
            if r is None:
                problems.append(f"{name}.{f.name} = {f.number}: no such field number in the SDK")
                continue
            checked_fields += 1
            ours_oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") and not f.proto3_optional else None
            ref_oneof = ref.oneof_decl[r.oneof_index].name if r.HasField("oneof_index") and not r.proto3_optional else None
            mine = (f.name, f.type, f.label, f.type_name.lstrip("."), f.proto3_optional, ours_oneof)
            theirs = (r.name, r.type, r.label, r.type_name.lstrip("."), r.proto3_optional, ref_oneof)
            # map entries are nested types named <Field>Entry in both; compare by suffix
            if mine[3].endswith("Entry") and theirs[3].endswith("Entry"):
                mine = mine[:3] + (mine[3].split(".")[-1],) + mine[4:]
                theirs = theirs[:3] + (theirs[3].split(".")[-1],) + theirs[4:]
            if mine != theirs:
                problems.append(f"{name} field {f.number}: ours {mine} vs SDK {theirs}")
    for name, enum in our_enums.items():
        ref = ref_enums.get(name)
        if ref is None:
            problems.append(f"enum {name} does not exist in the SDK")
            continue
        if [(v.name, v.number) for v in enum.value] != [(v.name, v.number) for v in ref.value]:
            problems.append(f"enum {name} values differ")
    for path, m in ref_methods.items():
        ours_m = our_methods.get(path)
        if ours_m is None:
            problems.append(f"rpc {path} missing from our service")
            continue
        shape = lambda x: (x.input_type.lstrip("."), x.output_type.lstrip("."), x.client_streaming, x.server_streaming)
        if shape(ours_m) != shape(m):
            problems.append(f"rpc {path}: ours {shape(ours_m)} vs SDK {shape(m)}")
    for p in problems:
        print("MISMATCH:", p)
    print(f"compared {len(our_msgs)} messages, {checked_fields} fields, {len(our_enums)} enums, {len(our_methods)} rpcs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
