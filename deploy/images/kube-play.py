"""Turns the chart's rendered manifests into what `podman kube play` (podman 4.3) runs.

    helm template ... | python3 kube-play.py OUT_DIR COORDINATOR_IP|- GRPC_PORT METRICS_PORT [SECRETS_DIR]

Writes OUT_DIR/coordinator.yaml (the StatefulSet's first pod, with its PVC), OUT_DIR/agent-POOL.yaml
(each Deployment's first pod), OUT_DIR/test.yaml (the `helm test` pod) and OUT_DIR/configmaps.yaml.
Each pod is the one its controller would create, with what the kubelet would do and podman
does not: `$(VAR)` references expanded, fieldRef environment variables resolved, the
coordinator's Service name resolving to the coordinator pod (hostAliases; pass its IP, or
`-` before it runs), and the Service's ports published on 127.0.0.1 (the coordinator pod's
hostPorts; other pods publish nothing). Probes are left out: podman 4.3 has no gRPC probe and runs HTTP probes with
curl inside the container; the test checks health from outside instead. Secret volumes
(podman 4.3's kube play crashes on Secrets) become host folders holding what the kubelet
would mount: the keys of SECRETS_DIR/SECRET_NAME/, only the listed items where the volume
lists some, copied into OUT_DIR/volumes/POD-VOLUME/ readable by the pod's user.
"""

import copy
import os
import re
import shutil
import sys
import urllib.parse

import yaml


def expand(text, env):
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def secret_folders(spec, pod, out, secrets):
    """Each secret volume of the pod as a host folder with exactly what it would mount."""
    for volume in spec.get("volumes", []):
        secret = volume.get("secret")
        if secret is None:
            continue
        source = os.path.join(secrets, secret["secretName"])
        target = os.path.join(out, "volumes", f"{pod}-{volume['name']}")
        os.makedirs(target, exist_ok=True)
        items = secret.get("items") or [{"key": k, "path": k} for k in os.listdir(source)]
        for item in items:
            shutil.copyfile(os.path.join(source, item["key"]), os.path.join(target, item["path"]))
            os.chmod(os.path.join(target, item["path"]), 0o444)
        volume.pop("secret")
        volume["hostPath"] = {"path": target, "type": "Directory"}


def pod_of(workload, name, coordinator_host, coordinator_ip, out, secrets):
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    if secrets:
        secret_folders(spec, name, out, secrets)
    for container in spec["containers"]:
        env = {}
        for var in container.get("env", []):
            if "valueFrom" in var:
                field = var.pop("valueFrom")["fieldRef"]["fieldPath"]
                var["value"] = {"metadata.name": name, "spec.nodeName": "podman"}[field]
            var["value"] = expand(var["value"], env)
            env[var["name"]] = var["value"]
        container["args"] = [expand(a, env) for a in container.get("args", [])]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            container.pop(probe, None)
        # podman 4.3 publishes a containerPort without hostPort on the host's same port:
        # two agent pods would collide on 9464. Only the coordinator's (the Service's) are
        # published, below.
        container.pop("ports", None)
    if coordinator_ip:
        spec["hostAliases"] = [{"ip": coordinator_ip, "hostnames": [coordinator_host]}]
    metadata = {"name": name, "labels": template["metadata"].get("labels", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def main():
    out, coordinator_ip, grpc_port, metrics_port = sys.argv[1:5]
    secrets = sys.argv[5] if len(sys.argv) > 5 else None
    coordinator_ip = None if coordinator_ip == "-" else coordinator_ip
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    # The Service's DNS name, as the agents' --coordinator flag spells it.
    coordinator_host = next(
        urllib.parse.urlparse(arg.split("=", 1)[1]).hostname
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        for arg in c.get("args", [])
        if arg.startswith("--coordinator=")
    )
    files = {}
    configmaps = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "StatefulSet" and name.endswith("-coordinator"):
            pod = pod_of(doc, f"{name}-0", coordinator_host, None, out, secrets)
            claims = []
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                claim_name = f"{claim['metadata']['name']}-{name}-0"
                claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "metadata": {"name": claim_name}, "spec": claim["spec"]})
                pod["spec"].setdefault("volumes", []).append(
                    {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}})
            ports = doc["spec"]["template"]["spec"]["containers"][0]["ports"]
            published = {"grpc": int(grpc_port), "metrics": int(metrics_port)}
            for port in ports:
                port["hostPort"] = published[port["name"]]
                port["hostIP"] = "127.0.0.1"
            pod["spec"]["containers"][0]["ports"] = ports
            files["coordinator.yaml"] = claims + [pod]
        elif kind == "Deployment" and coordinator_ip:
            pool = doc["spec"]["template"]["metadata"]["labels"]["baton.dev/pool"]
            files[f"agent-{pool}.yaml"] = [pod_of(doc, f"{name}-0", coordinator_host, coordinator_ip, out, secrets)]
        elif kind == "Pod" and coordinator_ip:  # the helm test pod
            files["test.yaml"] = [pod_of({"spec": {"template": doc}}, name, coordinator_host, coordinator_ip, out, secrets)]
        elif kind == "ConfigMap" and "helm.sh/hook" in doc["metadata"].get("annotations", {}):
            configmaps.append(doc)
    if configmaps:
        files["configmaps.yaml"] = configmaps
    for file, docs in files.items():
        with open(os.path.join(out, file), "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)


main()
