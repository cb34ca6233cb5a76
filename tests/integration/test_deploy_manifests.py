#!/usr/bin/python3
# tt-timeout: 60
"""Static checks of deploy/k8s: every kustomization resource and patch target
exists, Services select pods that exist, router probes use /health and
/ready on declared ports, and every TANDEM_* variable a container gets is a
flag of the `tandem` command it runs (read from `tandem <cmd> --help`)."""
import os
import re
import subprocess
import sys

try:
    import yaml
except ImportError:
    print("python3-yaml is not installed (scripts/install-deps.sh)")
    sys.exit(77)

root = os.environ.get("TANDEM_ROOT", ".")
tandem = os.environ["TANDEM_BIN"]
k8s = os.path.join(root, "deploy", "k8s")
failures = []


def fail(msg):
    print("FAIL " + msg)
    failures.append(msg)


def load_kustomization(d):
    with open(os.path.join(d, "kustomization.yaml")) as f:
        return yaml.safe_load(f)


def collect(d, seen):
    """Resources of a kustomization directory, recursively."""
    docs = []
    k = load_kustomization(d)
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(p):
            docs += collect(p, seen)
        elif os.path.isfile(p):
            with open(p) as f:
                docs += [x for x in yaml.safe_load_all(f) if x]
            seen.add(p)
        else:
            fail(f"{d}: resource {r} does not exist")
    return docs


help_cache = {}


def flag_envs(cmd):
    """TANDEM_* names `tandem <cmd> --help` lists, or None if unavailable."""
    if cmd not in help_cache:
        out = subprocess.run([tandem, cmd, "--help"], capture_output=True, text=True)
        if out.returncode != 0 or "not yet available" in out.stdout:
            help_cache[cmd] = None
        else:
            help_cache[cmd] = set(re.findall(r"env: (TANDEM_[A-Z0-9_]+)", out.stdout))
    return help_cache[cmd]


commands = set(re.findall(r"^  ([a-z]+) ", subprocess.run([tandem, "--help"],
                                                        capture_output=True,
                                                        text=True).stdout, re.M))
verified, unverifiable = 0, set()
for overlay in sorted(os.listdir(os.path.join(k8s, "overlays"))):
    d = os.path.join(k8s, "overlays", overlay)
    seen = set()
    docs = collect(d, seen)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    k = load_kustomization(d)
    for p in k.get("patches", []):
        t = p.get("target", {})
        if t.get("name") not in by_kind.get(t.get("kind"), {}):
            fail(f"{overlay}: patch target {t} does not exist")
        for op in yaml.safe_load(p["patch"]):
            if op["op"] not in ("add", "replace", "remove"):
                fail(f"{overlay}: unknown patch op {op}")
    config = {}  # ConfigMap name -> its keys, with the overlay's patches applied
    for name, cm in by_kind.get("ConfigMap", {}).items():
        config[name] = dict(cm.get("data", {}))
    for p in k.get("patches", []):
        if p["target"].get("kind") == "ConfigMap":
            for op in yaml.safe_load(p["patch"]):
                config.setdefault(p["target"]["name"], {})[op["path"].split("/")[-1]] = \
                    op.get("value")
    deployments = by_kind.get("Deployment", {})
    for svc in by_kind.get("Service", {}).values():
        sel = svc["spec"]["selector"]
        if not any(sel.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
                   for dep in deployments.values()):
            fail(f"{overlay}: Service {svc['metadata']['name']} selects no pods")
    for name, dep in deployments.items():
        tmpl = dep["spec"]["template"]
        if dep["spec"]["selector"]["matchLabels"].items() > tmpl["metadata"]["labels"].items():
            fail(f"{overlay}: {name} selector does not match its pod labels")
        for c in tmpl["spec"]["containers"]:
            cmd = c["args"][0]
            if cmd not in commands:
                fail(f"{overlay}: {name} runs unknown command 'tandem {cmd}'")
                continue
            envs = {e["name"] for e in c.get("env", [])}
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref not in config:
                    fail(f"{overlay}: {name} reads ConfigMap {ref}, which does not exist")
                envs |= set(config.get(ref, {}))
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in c and c[probe].get("httpGet", {}).get(
                        "port") not in ports:
                    fail(f"{overlay}: {name} {probe} uses an undeclared port")
            if cmd == "router":
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
                    fail(f"{overlay}: router readiness probe is not /ready")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
                    fail(f"{overlay}: router liveness probe is not /health")
            known = flag_envs(cmd)
            if known is None:
                unverifiable.add(cmd)
                continue
            for e in sorted(x for x in envs if x.startswith("TANDEM_")):
                verified += 1
                if e not in known:
                    fail(f"{overlay}: {name} sets {e}, which 'tandem {cmd}' has no flag for")

print(f"{verified} TANDEM_* settings checked against the CLI")
if unverifiable:
    print("not in this build, so not checked: tandem " + ", tandem ".join(sorted(unverifiable)))
if failures:
    sys.exit(1)
if verified == 0:
    print("no command of the manifests is available in this build")
    sys.exit(77)
print("deploy manifests ok")
