"""Prints a Jaeger trace (the JSON of /api/traces/ID on stdin) as an indented span tree."""
import json
import sys

data = json.load(sys.stdin).get("data") or []
if not data:
    print("  (not in Jaeger yet)")
    sys.exit(0)
trace = data[0]
service = {k: v["serviceName"] for k, v in trace["processes"].items()}
spans = {s["spanID"]: s for s in trace["spans"]}
children = {}
roots = []
for s in trace["spans"]:
    parent = next((r["spanID"] for r in s["references"] if r["refType"] == "CHILD_OF"), None)
    if parent in spans:
        children.setdefault(parent, []).append(s)
    else:
        roots.append(s)


def show(span, depth):
    print(f"  {'  ' * depth}{span['operationName']:<{48 - 2 * depth}} {service[span['processID']]:<18} {span['duration'] / 1000:>10.2f} ms")
    kids = sorted(children.get(span["spanID"], []), key=lambda s: s["startTime"])
    # Long runs of repeated steps: show the first three and a count.
    for i, kid in enumerate(kids):
        if i == 3 and len(kids) > 6:
            print(f"  {'  ' * (depth + 1)}… {len(kids) - 4} more")
        if 3 <= i < len(kids) - 1 and len(kids) > 6:
            continue
        show(kid, depth + 1)


for root in sorted(roots, key=lambda s: s["startTime"]):
    show(root, 0)
