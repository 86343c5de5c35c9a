#!/usr/bin/env python3
"""Assertions on the rendered ordermesh Helm chart (real `helm template` output).

Run by deploy/check.sh with the venv's python (PyYAML and jsonschema):

    .tools/venv/bin/python deploy/tests/chart_test.py [-v]

HELM names the helm binary (default: <repo>/.tools/bin/helm, then PATH).
Exits non-zero when an assertion fails.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ordermesh"
PRODUCTION = ROOT / "deploy" / "helm" / "values-production.yaml"
SERVICEMONITOR_SCHEMA = Path(__file__).resolve().parent / "servicemonitor.schema.json"
RELEASE = "om"
COMPONENTS = ("order-svc", "processor-svc", "relay")
HOOK_PHASES = {"pre-install", "pre-upgrade"}
# The chart renders nothing without a token verification key (by design);
# the "default" renders add this one, as deploy/check.sh does.
TEST_JWT_SECRET = "deploy-check-only-not-a-real-secret-0123456789"
WITH_SECRET = ("--set", f"auth.jwtSecret={TEST_JWT_SECRET}")
AUTH_SERVICES = ("order-svc", "processor-svc")


def helm_binary():
    env = os.environ.get("HELM")
    if env:
        return env
    local = ROOT / ".tools" / "bin" / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if not found:
        raise SystemExit("chart_test: no helm (set HELM or run deploy/check.sh)")
    return found


HELM = helm_binary()
# Keep helm's cache/config out of the user's home.
HELM_HOME = tempfile.mkdtemp(prefix="ordermesh-chart-test-")
HELM_ENV = dict(
    os.environ,
    HELM_CACHE_HOME=f"{HELM_HOME}/cache",
    HELM_CONFIG_HOME=f"{HELM_HOME}/config",
    HELM_DATA_HOME=f"{HELM_HOME}/data",
)


def helm(*args, check=True):
    proc = subprocess.run(
        [HELM, *args],
        capture_output=True,
        text=True,
        env=HELM_ENV,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(*args, secret=True):
    """`helm template` the chart (plus auth.jwtSecret unless secret=False);
    returns the list of objects."""
    extra = WITH_SECRET if secret else ()
    out = helm("template", RELEASE, str(CHART), "--namespace", "ordermesh", *extra, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_fails(*args):
    """stderr of a `helm template` that must fail (no auth.jwtSecret added)."""
    proc = helm("template", RELEASE, str(CHART), "--namespace", "ordermesh", *args, check=False)
    assert proc.returncode != 0, f"helm template {' '.join(args)} succeeded"
    return proc.stderr


def kubernetes_validate(docs):
    """kubernetes-validate --strict (the venv's, beside this python) on docs."""
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        return
    proc = subprocess.run(
        [str(tool), "--strict", "--quiet", "-k", "1.35.0", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def named(docs, kind, component):
    name = f"{RELEASE}-ordermesh-{component}"
    matches = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def hook_phases(obj):
    ann = obj["metadata"].get("annotations") or {}
    return {p.strip() for p in ann.get("helm.sh/hook", "").split(",") if p.strip()}


def pod_specs(docs):
    """(label, pod spec) of every pod template: Deployments and Jobs."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def container_of(docs, component):
    (c,) = named(docs, "Deployment", component)["spec"]["template"]["spec"]["containers"]
    return c


def configmap_data(docs):
    (cm,) = by_kind(docs, "ConfigMap")
    return cm["data"]


DEFAULT = render()
PROD = render("-f", str(PRODUCTION), secret=False)


class Deployments(unittest.TestCase):
    def test_three_deployments(self):
        names = sorted(d["metadata"]["name"] for d in by_kind(DEFAULT, "Deployment"))
        self.assertEqual(names, sorted(f"{RELEASE}-ordermesh-{c}" for c in COMPONENTS))

    def test_probes(self):
        for docs in (DEFAULT, PROD):
            for component in COMPONENTS:
                dep = named(docs, "Deployment", component)
                (container,) = dep["spec"]["template"]["spec"]["containers"]
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    self.assertTrue(probe in container, f"{component} has no {probe}")
                    p = container[probe]
                    if component == "relay":
                        path = "/readyz" if probe == "readinessProbe" else "/healthz"
                        self.assertEqual(p["httpGet"]["path"], path)
                        self.assertEqual(p["httpGet"]["port"], "admin")
                    elif probe == "readinessProbe":
                        # Ready = gRPC health SERVING (database and broker reachable).
                        port = container["ports"][0]["containerPort"]
                        self.assertEqual(p["grpc"], {"port": port}, f"{component} {probe}")
                    else:
                        # Alive = the process serves; a broker outage must not restart it.
                        port = container["ports"][0]["containerPort"]
                        self.assertEqual(p["httpGet"], {"path": "/healthz", "port": port}, f"{component} {probe}")

    def test_commands_and_listen_addresses(self):
        cm = by_kind(DEFAULT, "ConfigMap")[0]["data"]
        self.assertEqual(cm["ORDER_SVC_ADDR"], "0.0.0.0:50051")
        self.assertEqual(cm["PROCESSOR_SVC_ADDR"], "0.0.0.0:50052")
        self.assertEqual(cm["RELAY_ADMIN_ADDR"], "0.0.0.0:9100")
        for component in COMPONENTS:
            (c,) = named(DEFAULT, "Deployment", component)["spec"]["template"]["spec"]["containers"]
            self.assertEqual(c["command"], [f"/usr/local/bin/{component}"])

    def test_connection_env(self):
        wanted = {
            "order-svc": {"ORDER_DATABASE_URL", "AMQP_URL"},
            "processor-svc": {"PROCESSOR_DATABASE_URL", "AMQP_URL"},
            "relay": {"ORDER_DATABASE_URL", "PROCESSOR_DATABASE_URL", "AMQP_URL", "RELAY_SOURCES"},
        }
        for component, names in wanted.items():
            (c,) = named(DEFAULT, "Deployment", component)["spec"]["template"]["spec"]["containers"]
            env = env_of(c)
            self.assertTrue(names <= env.keys(), f"{component}: {names - env.keys()} missing")
            for name in names - {"RELAY_SOURCES"}:
                self.assertIn("secretKeyRef", env[name]["valueFrom"], f"{component} {name}")
        (relay,) = named(DEFAULT, "Deployment", "relay")["spec"]["template"]["spec"]["containers"]
        self.assertEqual(
            env_of(relay)["RELAY_SOURCES"]["value"], "$(ORDER_DATABASE_URL),$(PROCESSOR_DATABASE_URL)"
        )

    def test_services_select_their_pods(self):
        for component in COMPONENTS:
            dep = named(DEFAULT, "Deployment", component)
            svc = named(DEFAULT, "Service", component)
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            for k, v in svc["spec"]["selector"].items():
                self.assertEqual(pod_labels.get(k), v, f"{component} service selector {k}")
            port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
            self.assertIn(svc["spec"]["ports"][0]["targetPort"], port_names)


class RelayReplicas(unittest.TestCase):
    def replicas(self, docs):
        return named(docs, "Deployment", "relay")["spec"]["replicas"]

    def test_default_is_two(self):
        self.assertEqual(self.replicas(DEFAULT), 2)

    def test_set_changes_rendered_replicas(self):
        self.assertEqual(self.replicas(render("--set", "relay.replicaCount=5")), 5)
        self.assertEqual(self.replicas(render("--set", "relay.replicaCount=1")), 1)

    def test_hpa_owns_replicas_when_enabled(self):
        docs = render("--set", "relay.autoscaling.enabled=true")
        self.assertNotIn("replicas", named(docs, "Deployment", "relay")["spec"])
        named(docs, "HorizontalPodAutoscaler", "relay")


class MigrationsHook(unittest.TestCase):
    def job(self, docs):
        (job,) = by_kind(docs, "Job")
        return job

    def test_job_is_pre_install_pre_upgrade_hook(self):
        for docs in (DEFAULT, PROD):
            job = self.job(docs)
            self.assertEqual(hook_phases(job), HOOK_PHASES)
            ann = job["metadata"]["annotations"]
            self.assertIn("helm.sh/hook-weight", ann)
            self.assertIn("before-hook-creation", ann["helm.sh/hook-delete-policy"])

    def test_job_runs_both_migrations(self):
        spec = self.job(DEFAULT)["spec"]["template"]["spec"]
        commands = [c["command"] for c in spec.get("initContainers", []) + spec["containers"]]
        self.assertEqual(
            commands,
            [["/usr/local/bin/order-svc", "migrate"], ["/usr/local/bin/processor-svc", "migrate"]],
        )
        self.assertEqual(spec["restartPolicy"], "Never")
        self.assertNotIn("serviceAccountName", spec, "the release's ServiceAccount does not exist yet")

    def test_job_secret_exists_before_the_job(self):
        job = self.job(DEFAULT)
        spec = job["spec"]["template"]["spec"]
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in spec["initContainers"] + spec["containers"]
            for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        self.assertEqual(len(refs), 1)
        (secret,) = [s for s in by_kind(DEFAULT, "Secret") if s["metadata"]["name"] in refs]
        self.assertEqual(hook_phases(secret), HOOK_PHASES)
        weight = lambda o: int(o["metadata"]["annotations"]["helm.sh/hook-weight"])  # noqa: E731
        self.assertLess(weight(secret), weight(job))

    def test_existing_secret_is_used_directly(self):
        job = self.job(PROD)
        spec = job["spec"]["template"]["spec"]
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in spec["initContainers"] + spec["containers"]
            for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        self.assertEqual(refs, {"ordermesh-postgres"})
        self.assertEqual(by_kind(PROD, "Secret"), [], "no chart Secret with existing secrets")

    def test_can_be_disabled(self):
        self.assertEqual(by_kind(render("--set", "migrations.enabled=false"), "Job"), [])


class Availability(unittest.TestCase):
    def test_hpa(self):
        for docs in (DEFAULT, PROD):
            for component in ("order-svc", "processor-svc"):
                hpa = named(docs, "HorizontalPodAutoscaler", component)
                self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
                self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], f"{RELEASE}-ordermesh-{component}")
                self.assertGreaterEqual(hpa["spec"]["maxReplicas"], hpa["spec"]["minReplicas"])
                self.assertNotIn("replicas", named(docs, "Deployment", component)["spec"])

    def test_pdb(self):
        for docs in (DEFAULT, PROD):
            for component in COMPONENTS:
                pdb = named(docs, "PodDisruptionBudget", component)
                self.assertEqual(pdb["apiVersion"], "policy/v1")
                pod_labels = named(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
                for k, v in pdb["spec"]["selector"]["matchLabels"].items():
                    self.assertEqual(pod_labels.get(k), v)
                self.assertTrue({"minAvailable", "maxUnavailable"} & pdb["spec"].keys())


class Security(unittest.TestCase):
    def check(self, docs):
        specs = list(pod_specs(docs))
        self.assertEqual(len(specs), 4, "three Deployments and the migrations Job")
        for label, spec in specs:
            psc = spec["securityContext"]
            self.assertIs(psc["runAsNonRoot"], True, label)
            self.assertNotEqual(psc.get("runAsUser", 0), 0, label)
            self.assertEqual(psc["seccompProfile"]["type"], "RuntimeDefault", label)
            self.assertIs(spec["automountServiceAccountToken"], False, label)
            for c in spec.get("initContainers", []) + spec["containers"]:
                where = f"{label} container {c['name']}"
                sc = c["securityContext"]
                self.assertIs(sc["runAsNonRoot"], True, where)
                self.assertNotEqual(sc.get("runAsUser", psc.get("runAsUser", 0)), 0, where)
                self.assertIs(sc["allowPrivilegeEscalation"], False, where)
                self.assertIs(sc["readOnlyRootFilesystem"], True, where)
                self.assertIs(sc.get("privileged", False), False, where)
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where)
                self.assertNotIn("add", sc["capabilities"], where)
                self.assertIn("limits", c["resources"], where)
                self.assertIn("requests", c["resources"], where)

    def test_default(self):
        self.check(DEFAULT)

    def test_production(self):
        self.check(PROD)

    def test_schema_refuses_root(self):
        proc = helm("template", RELEASE, str(CHART), "--set", "securityContext.runAsNonRoot=false", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("runAsNonRoot", proc.stderr)

    def test_network_policies(self):
        for docs in (DEFAULT, PROD):
            for component in COMPONENTS:
                named(docs, "NetworkPolicy", component)
        prod_relay = named(PROD, "NetworkPolicy", "relay")
        self.assertIn("Egress", prod_relay["spec"]["policyTypes"])


class Values(unittest.TestCase):
    def test_schema_rejects_unknown_keys(self):
        proc = helm("template", RELEASE, str(CHART), "--set", "relay.replicas=3", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("replicas", proc.stderr)

    def test_queue_type(self):
        self.assertEqual(by_kind(DEFAULT, "ConfigMap")[0]["data"]["AMQP_QUEUE_TYPE"], "quorum")
        classic = render("--set", "rabbitmq.quorumQueues=false")
        self.assertEqual(by_kind(classic, "ConfigMap")[0]["data"]["AMQP_QUEUE_TYPE"], "classic")

    def test_otlp_endpoint(self):
        self.assertNotIn("OTEL_EXPORTER_OTLP_ENDPOINT", by_kind(DEFAULT, "ConfigMap")[0]["data"])
        self.assertEqual(
            by_kind(PROD, "ConfigMap")[0]["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://otel-collector.observability.svc:4317",
        )

    def test_urls_from_values(self):
        docs = render(
            "--set", "postgresql.host=db.example", "--set", "postgresql.password=p@ss:w/rd",
            "--set", "postgresql.params=connect_timeout=5", "--set", "rabbitmq.vhost=/",
        )
        import base64

        data = {k: base64.b64decode(v).decode() for k, v in named_secret(docs).items()}
        self.assertEqual(
            data["order-database-url"],
            "postgres://postgres:p%40ss%3Aw%2Frd@db.example:5432/ordermesh_orders?connect_timeout=5",
        )
        self.assertEqual(data["amqp-url"], "amqp://guest:guest@rabbitmq:5672/%2F")


def named_secret(docs):
    (s,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == f"{RELEASE}-ordermesh-connections"]
    return s["data"]


class Production(unittest.TestCase):
    def test_ingress_routes_rest(self):
        (ing,) = by_kind(PROD, "Ingress")
        paths = {
            p["path"]: p["backend"]["service"]
            for rule in ing["spec"]["rules"]
            for p in rule["http"]["paths"]
        }
        self.assertEqual(paths["/v1/orders"], {"name": f"{RELEASE}-ordermesh-order-svc", "port": {"number": 50051}})
        self.assertEqual(
            paths["/v1/accounts"], {"name": f"{RELEASE}-ordermesh-processor-svc", "port": {"number": 50052}}
        )
        self.assertTrue(ing["spec"]["tls"])

    def test_servicemonitors_match_schema_and_services(self):
        schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
        monitors = by_kind(PROD, "ServiceMonitor")
        self.assertEqual(len(monitors), 3)
        for sm in monitors:
            jsonschema.validate(sm, schema)
            component = sm["metadata"]["labels"]["app.kubernetes.io/component"]
            svc = named(PROD, "Service", component)
            for k, v in sm["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(svc["metadata"]["labels"].get(k), v)
            self.assertEqual(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"])
        self.assertEqual(by_kind(DEFAULT, "ServiceMonitor"), [], "off by default (needs the CRD)")

    def test_production_relay_replicas(self):
        self.assertEqual(named(PROD, "Deployment", "relay")["spec"]["replicas"], 3)


class Notes(unittest.TestCase):
    def test_notes_have_grpcurl(self):
        notes = self.notes()
        self.assertIn(f"port-forward svc/{RELEASE}-ordermesh-order-svc 50051:50051", notes)
        self.assertIn("grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check", notes)
        self.assertIn("ordermesh.order.v1.OrderService/CreateOrder", notes)

    def notes(self, *args):
        out = helm(
            "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", "ordermesh", *(args or WITH_SECRET)
        ).stdout
        return out[out.index("NOTES:"):]

    def test_notes_show_how_to_get_and_pass_a_token(self):
        notes = self.notes()
        self.assertIn(
            f"kubectl -n ordermesh exec deploy/{RELEASE}-ordermesh-processor-svc -c processor-svc --", notes
        )
        self.assertIn("/usr/local/bin/processor-svc token --subject ops --role admin", notes)
        calls = [line for line in notes.splitlines() if line.strip().startswith("grpcurl ")]
        self.assertTrue(calls)
        for line in calls:
            if "grpc.health.v1.Health" in line:
                self.assertNotIn("authorization", line, "health needs no token")
            else:
                self.assertIn('-H "authorization: Bearer $TOKEN"', line)
        self.assertIn(f"get secret {RELEASE}-ordermesh-auth -o jsonpath='{{.data.jwt-secret}}'", notes)
        prod = self.notes("-f", str(PRODUCTION))
        self.assertIn("get secret ordermesh-auth -o jsonpath='{.data.jwt-secret}'", prod)


def secret_ref(container, name):
    return container_env_ref(container, name)["secretKeyRef"]


def container_env_ref(container, name):
    env = env_of(container)
    assert name in env, f"{container['name']} has no {name}"
    assert "value" not in env[name], f"{container['name']} {name} has a literal value"
    return env[name]["valueFrom"]


class Auth(unittest.TestCase):
    def test_services_get_the_secret_from_a_secret(self):
        for component in AUTH_SERVICES:
            ref = secret_ref(container_of(DEFAULT, component), "AUTH_JWT_SECRET")
            self.assertEqual(ref, {"name": f"{RELEASE}-ordermesh-auth", "key": "jwt-secret"}, component)
        (secret,) = [s for s in by_kind(DEFAULT, "Secret") if s["metadata"]["name"] == f"{RELEASE}-ordermesh-auth"]
        self.assertEqual(base64.b64decode(secret["data"]["jwt-secret"]).decode(), TEST_JWT_SECRET)
        self.assertEqual(hook_phases(secret), set(), "a release object, not a hook")

    def test_relay_and_migrations_get_no_auth(self):
        for docs in (DEFAULT, PROD):
            relay = container_of(docs, "relay")
            self.assertFalse({n for n in env_of(relay) if n.startswith("AUTH_")}, "relay")
            (job,) = by_kind(docs, "Job")
            spec = job["spec"]["template"]["spec"]
            for c in spec["initContainers"] + spec["containers"]:
                self.assertFalse({n for n in env_of(c) if n.startswith("AUTH_")}, c["name"])
            self.assertNotIn("checksum/auth", named(docs, "Deployment", "relay")["spec"]["template"]["metadata"]["annotations"])

    def test_secret_never_in_a_configmap(self):
        for docs in (DEFAULT, PROD):
            for cm in by_kind(docs, "ConfigMap"):
                self.assertNotIn("AUTH_JWT_SECRET", cm["data"])
                self.assertFalse([k for k, v in cm["data"].items() if TEST_JWT_SECRET in str(v)])

    def test_existing_secret_is_referenced_and_none_created(self):
        docs = render("--set", "auth.existingSecret=x", secret=False)
        for component in AUTH_SERVICES:
            self.assertEqual(
                secret_ref(container_of(docs, component), "AUTH_JWT_SECRET"), {"name": "x", "key": "jwt-secret"}
            )
        names = [s["metadata"]["name"] for s in by_kind(docs, "Secret")]
        self.assertNotIn(f"{RELEASE}-ordermesh-auth", names)
        self.assertFalse([s for s in by_kind(docs, "Secret") if "jwt-secret" in s.get("data", {})])
        # existingSecret wins over jwtSecret; the key is configurable.
        docs = render("--set", "auth.existingSecret=x", "--set", "auth.existingSecretKey=hs256")
        self.assertEqual(
            secret_ref(container_of(docs, "order-svc"), "AUTH_JWT_SECRET"), {"name": "x", "key": "hs256"}
        )
        self.assertNotIn(f"{RELEASE}-ordermesh-auth", [s["metadata"]["name"] for s in by_kind(docs, "Secret")])

    def test_production_uses_its_existing_secret(self):
        for component in AUTH_SERVICES:
            self.assertEqual(
                secret_ref(container_of(PROD, component), "AUTH_JWT_SECRET"),
                {"name": "ordermesh-auth", "key": "jwt-secret"},
            )

    def test_no_key_fails_with_what_to_set(self):
        err = render_fails()
        for hint in ("auth.jwtSecret", "auth.existingSecret", "openssl rand"):
            self.assertIn(hint, err)

    def test_short_secret_is_refused(self):
        err = render_fails("--set", "auth.jwtSecret=too-short")
        self.assertIn("jwtSecret", err)
        self.assertIn("32", err)

    def test_changing_the_secret_rolls_only_the_services(self):
        other = render("--set", "auth.jwtSecret=" + "z" * 40, secret=False)
        for component in COMPONENTS:
            before = named(DEFAULT, "Deployment", component)["spec"]["template"]["metadata"]["annotations"]
            after = named(other, "Deployment", component)["spec"]["template"]["metadata"]["annotations"]
            if component in AUTH_SERVICES:
                self.assertNotEqual(before["checksum/auth"], after["checksum/auth"], component)
            else:
                self.assertEqual(before, after, component)

    def test_asymmetric_keys(self):
        docs = render(
            "--set", "auth.publicKeysSecret=om-keys", "--set", "auth.publicKeys={a.pem,b.pem}",
            "--set", "auth.jwksKey=jwks.json", "--set", "auth.signingKeySecret=om-signing",
            secret=False,
        )
        kubernetes_validate(docs)
        self.assertFalse([s for s in by_kind(docs, "Secret") if "jwt-secret" in s.get("data", {})])
        for component in AUTH_SERVICES:
            dep = named(docs, "Deployment", component)
            spec = dep["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            env = env_of(c)
            self.assertNotIn("AUTH_JWT_SECRET", env, component)
            self.assertEqual(
                env["AUTH_JWT_PUBLIC_KEYS"]["value"], "/etc/ordermesh/auth/keys/a.pem,/etc/ordermesh/auth/keys/b.pem"
            )
            self.assertEqual(env["AUTH_JWKS_FILE"]["value"], "/etc/ordermesh/auth/keys/jwks.json")
            volumes = {v["name"]: v for v in spec["volumes"]}
            self.assertEqual(volumes["auth-keys"]["secret"]["secretName"], "om-keys")
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            self.assertTrue(mounts["auth-keys"]["readOnly"])
            signs = component == "processor-svc"
            # The private key is mounted into processor-svc only.
            self.assertEqual("AUTH_JWT_SIGNING_KEY_FILE" in env, signs, component)
            self.assertEqual("auth-signing-key" in volumes, signs, component)
            if signs:
                self.assertEqual(
                    env["AUTH_JWT_SIGNING_KEY_FILE"]["value"], "/etc/ordermesh/auth/signing/signing-key.pem"
                )
                self.assertEqual(volumes["auth-signing-key"]["secret"]["secretName"], "om-signing")
                self.assertEqual(volumes["auth-signing-key"]["secret"]["defaultMode"], 0o440)
        relay = named(docs, "Deployment", "relay")["spec"]["template"]["spec"]
        self.assertEqual([v["name"] for v in relay["volumes"]], ["tmp"])

    def test_asymmetric_keys_need_a_way_to_sign(self):
        err = render_fails("--set", "auth.publicKeysSecret=om-keys", "--set", "auth.publicKeys={a.pem}")
        self.assertIn("auth.signingKeySecret", err)
        self.assertIn("auth.publicKeys", render_fails("--set", "auth.publicKeysSecret=om-keys"))
        self.assertIn("auth.publicKeysSecret", render_fails("--set", "auth.publicKeys={a.pem}"))


class Tuning(unittest.TestCase):
    def test_defaults_reach_the_configmap(self):
        self.assertLessEqual(
            {
                "RATE_LIMIT_PER_S": "50",
                "RATE_LIMIT_BURST": "100",
                "RATE_LIMIT_ADMIN": "false",
                "AUTH_TOKEN_TTL_S": "3600",
                "AMQP_MAX_ATTEMPTS": "5",
                "AMQP_RETRY_BASE_MS": "1000",
                "AMQP_RETRY_MAX_MS": "60000",
                "GRPC_MAX_MESSAGE_BYTES": "4194304",
            }.items(),
            configmap_data(DEFAULT).items(),
        )

    def test_set_values_reach_the_configmap(self):
        data = configmap_data(render(
            "--set", "rateLimit.perSecond=7", "--set", "rateLimit.burst=3000000", "--set", "rateLimit.admin=true",
            "--set", "auth.tokenTtlSeconds=86400", "--set", "consumer.maxAttempts=9",
            "--set", "consumer.retryBaseMs=250", "--set", "consumer.retryMaxMs=2000000",
            "--set", "config.grpcMaxMessageBytes=16777216",
        ))
        self.assertEqual(data["RATE_LIMIT_PER_S"], "7")
        self.assertEqual(data["RATE_LIMIT_BURST"], "3000000")
        self.assertEqual(data["RATE_LIMIT_ADMIN"], "true")
        self.assertEqual(data["AUTH_TOKEN_TTL_S"], "86400")
        self.assertEqual(data["AMQP_MAX_ATTEMPTS"], "9")
        self.assertEqual(data["AMQP_RETRY_BASE_MS"], "250")
        self.assertEqual(data["AMQP_RETRY_MAX_MS"], "2000000")
        self.assertEqual(data["GRPC_MAX_MESSAGE_BYTES"], "16777216")

    def test_large_values_from_a_values_file_stay_integers(self):
        # Values files give floats to the templates: 4194304 must not become 4.194304e+06.
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("rateLimit:\n  burst: 3000000\nconsumer:\n  retryMaxMs: 2000000\nauth:\n  tokenTtlSeconds: 1209600\n")
            f.flush()
            data = configmap_data(render("-f", f.name))
        self.assertEqual(data["RATE_LIMIT_BURST"], "3000000")
        self.assertEqual(data["AMQP_RETRY_MAX_MS"], "2000000")
        self.assertEqual(data["AUTH_TOKEN_TTL_S"], "1209600")
        self.assertEqual(configmap_data(PROD)["GRPC_MAX_MESSAGE_BYTES"], "4194304")

    def test_trusted_proxies_reach_the_configmap(self):
        self.assertEqual(configmap_data(DEFAULT)["AUTH_TRUSTED_PROXIES"], "")
        self.assertEqual(configmap_data(PROD)["AUTH_TRUSTED_PROXIES"], "10.244.0.0/16")
        data = configmap_data(render("--set", "auth.trustedProxies={10.0.0.0/8,fd00::/8,192.0.2.7}"))
        self.assertEqual(data["AUTH_TRUSTED_PROXIES"], "10.0.0.0/8,fd00::/8,192.0.2.7")
        self.assertIn("trustedProxies", render_fails(*WITH_SECRET, "--set", "auth.trustedProxies={ingress}"))
        self.assertIn("trustedProxies", render_fails(*WITH_SECRET, "--set", "auth.trustedProxies=10.0.0.0/8"))

    def test_bounds(self):
        self.assertIn("retryMaxMs", render_fails(*WITH_SECRET, "--set", "consumer.retryMaxMs=10"))
        self.assertIn("maxAttempts", render_fails(*WITH_SECRET, "--set", "consumer.maxAttempts=101"))
        self.assertIn("perSecond", render_fails(*WITH_SECRET, "--set", "rateLimit.perSecond=-1"))
        self.assertIn("tokenTtlSeconds", render_fails(*WITH_SECRET, "--set", "auth.tokenTtlSeconds=0"))
        self.assertIn("admin", render_fails(*WITH_SECRET, "--set-string", "rateLimit.admin=yes"))


# ---------------------------------------------------------------- operable chart (issue 16)

TESTS_DIR = Path(__file__).resolve().parent
OPERABLE_VALUES = TESTS_DIR / "values-operable.yaml"
PROMETHEUSRULE_SCHEMA = TESTS_DIR / "prometheusrule.schema.json"
GRAFANA_SOURCE = ROOT / "deploy" / "grafana" / "ordermesh.json"
GRAFANA_COPY = CHART / "files" / "grafana" / "ordermesh.json"
COMPOSE = ROOT / "deploy" / "compose.yaml"
METRICS_RS = ROOT / "runtime" / "src" / "metrics.rs"
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
TLS_VARS = ("TLS_CERT_FILE", "TLS_KEY_FILE", "PG_CA_FILE", "AMQP_CA_FILE")
OPERABLE = render("-f", str(OPERABLE_VALUES), secret=False)


def containers_of(docs):
    """(label, pod spec, container) of every Deployment, Job and Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            spec = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            spec = d["spec"]
        else:
            continue
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{d['kind']}/{d['metadata']['name']}/{c['name']}", spec, c


def mounted_secret_file(spec, container, path):
    """(Secret name, key) of the file at `path` in `container`, or None."""
    path = Path(path)
    for m in container.get("volumeMounts", []):
        if Path(m["mountPath"]) != path.parent:
            continue
        (vol,) = [v for v in spec.get("volumes", []) if v["name"] == m["name"]]
        secret = vol.get("secret")
        if not secret:
            return None
        for item in secret.get("items", []):
            if item["path"] == path.name:
                return secret["secretName"], item["key"]
    return None


def test_pod(docs):
    pods = [d for d in by_kind(docs, "Pod") if "test" in hook_phases(d)]
    assert len(pods) == 1, f"expected one helm test Pod, found {len(pods)}"
    return pods[0]


class OperableChart(unittest.TestCase):
    def test_renders_validate(self):
        kubernetes_validate([d for d in OPERABLE if d["kind"] not in CRD_KINDS])

    def test_tls_variables_name_mounted_secret_files(self):
        expected = {
            "order-svc": set(TLS_VARS),
            "processor-svc": set(TLS_VARS),
            # The admin port stays plain; it talks to PostgreSQL and RabbitMQ.
            "relay": {"PG_CA_FILE", "AMQP_CA_FILE"},
        }
        secrets = {
            "TLS_CERT_FILE": ("ordermesh-tls", "tls.crt"),
            "TLS_KEY_FILE": ("ordermesh-tls", "tls.key"),
            "PG_CA_FILE": ("postgresql-ca", "ca.crt"),
            "AMQP_CA_FILE": ("rabbitmq-ca", "ca.crt"),
        }
        seen = set()
        for label, spec, c in containers_of(OPERABLE):
            env = env_of(c)
            present = {v for v in TLS_VARS if v in env}
            if label.startswith("Deployment/"):
                component = label.split("/")[1].removeprefix(f"{RELEASE}-ordermesh-")
                self.assertEqual(present, expected[component], label)
                seen.add(component)
            elif label.startswith("Job/"):
                self.assertEqual(present, {"PG_CA_FILE"}, f"{label}: migrations talk to PostgreSQL only")
                seen.add(label)
            for var in present:
                self.assertEqual(
                    mounted_secret_file(spec, c, env[var]["value"]), secrets[var], f"{label} {var}"
                )
            for m in c.get("volumeMounts", []):
                if m["mountPath"].startswith("/etc/ordermesh/tls"):
                    self.assertTrue(m.get("readOnly"), f"{label} {m}")
        self.assertTrue(set(expected) <= seen and len(seen) == 5, seen)
        # The private key is not world-readable.
        order = named(OPERABLE, "Deployment", "order-svc")["spec"]["template"]["spec"]
        (server,) = [v for v in order["volumes"] if v["name"] == "tls-server"]
        self.assertEqual(server["secret"]["defaultMode"], 0o440)

    def test_no_tls_by_default(self):
        for docs in (DEFAULT, PROD):
            for label, _, c in containers_of(docs):
                self.assertFalse(set(TLS_VARS) & set(env_of(c)), label)

    def test_probes_follow_tls(self):
        for component in AUTH_SERVICES:
            c = container_of(OPERABLE, component)
            port = c["ports"][0]["containerPort"]
            ready = c["readinessProbe"]
            self.assertNotIn("grpc", ready, "native gRPC probes cannot speak TLS")
            cmd = ready["exec"]["command"]
            self.assertEqual(cmd[0], "/usr/local/bin/grpc_health_probe")
            self.assertIn(f"-addr=127.0.0.1:{port}", cmd)
            self.assertIn("-tls", cmd)
            for probe in ("livenessProbe", "startupProbe"):
                self.assertEqual(c[probe]["httpGet"], {"path": "/healthz", "port": port, "scheme": "HTTPS"})

    def test_helm_test_pod_checks_both_services(self):
        for docs, tls in ((DEFAULT, False), (OPERABLE, True)):
            pod = test_pod(docs)
            self.assertEqual(pod["spec"]["restartPolicy"], "Never")
            addrs = set()
            for c in pod["spec"]["containers"]:
                cmd = c["command"]
                self.assertEqual(cmd[0], "/usr/local/bin/grpc_health_probe")
                (addr,) = [a.removeprefix("-addr=") for a in cmd if a.startswith("-addr=")]
                addrs.add(addr)
                self.assertEqual("-tls" in cmd, tls, cmd)
                self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
                if tls:
                    (ca,) = [a.removeprefix("-tls-ca-cert=") for a in cmd if a.startswith("-tls-ca-cert=")]
                    self.assertEqual(mounted_secret_file(pod["spec"], c, ca), ("ordermesh-tls", "ca.crt"))
            (vol,) = pod["spec"].get("volumes", [None]) if tls else (None,)
            if vol:
                self.assertEqual([i["key"] for i in vol["secret"]["items"]], ["ca.crt"], "the CA only, no key")
            expected = set()
            for component in AUTH_SERVICES:
                svc = named(docs, "Service", component)
                expected.add(f"{svc['metadata']['name']}.ordermesh.svc:{svc['spec']['ports'][0]['port']}")
            self.assertEqual(addrs, expected)
        # TLS without a CA: checked over TLS, certificate not verified.
        docs = render("--set", "tls.server.secretName=ordermesh-tls")
        for c in test_pod(docs)["spec"]["containers"]:
            self.assertIn("-tls-no-verify", c["command"])
        self.assertEqual(by_kind(render("--set", "helmTest.enabled=false"), "Pod"), [])

    def test_prometheus_rule(self):
        self.assertEqual(by_kind(DEFAULT, "PrometheusRule"), [], "off by default (needs the CRD)")
        (rule,) = by_kind(OPERABLE, "PrometheusRule")
        jsonschema.validate(rule, json.loads(PROMETHEUSRULE_SCHEMA.read_text()))
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        metrics = {
            "OrdermeshOutboxBacklogOld": "ordermesh_relay_outbox_oldest_age_seconds",
            "OrdermeshOutboxRowsParked": "ordermesh_relay_parked_rows",
            "OrdermeshConsumerDeadLettering": "ordermesh_consumer_dead_lettered_total",
            "OrdermeshOrderPendingTooLong": "ordermesh_orders_oldest_pending_seconds",
            "OrdermeshConsumerRedeliveries": "ordermesh_consumer_retries_total",
        }
        self.assertEqual(set(alerts), set(metrics))
        exported = METRICS_RS.read_text()
        for name, metric in metrics.items():
            expr = alerts[name]["expr"]
            self.assertIn(f'{metric}{{namespace="ordermesh"}}', expr, name)
            self.assertIn(f'"{metric}"', exported, f"{metric} is not in runtime/src/metrics.rs")
            self.assertEqual(alerts[name]["for"], "5m")
            self.assertEqual(alerts[name]["labels"]["severity"], "warning")
            # Prometheus templates reach the rule unexpanded by helm.
            self.assertIn("{{ $value", alerts[name]["annotations"]["description"], name)
        self.assertTrue(alerts["OrdermeshOutboxBacklogOld"]["expr"].endswith("> 60"))
        docs = render("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.outboxOldestAgeSeconds=120",
                      "--set", "prometheusRule.alertLabels.team=payments")
        (rule,) = by_kind(docs, "PrometheusRule")
        (backlog,) = [r for r in rule["spec"]["groups"][0]["rules"] if r["alert"] == "OrdermeshOutboxBacklogOld"]
        self.assertTrue(backlog["expr"].endswith("> 120"))
        self.assertEqual(backlog["labels"]["team"], "payments")

    def test_dashboard_configmap(self):
        self.assertFalse(
            [d for d in by_kind(DEFAULT, "ConfigMap") if d["metadata"]["name"].endswith("grafana-dashboard")]
        )
        (cm,) = [d for d in by_kind(OPERABLE, "ConfigMap") if d["metadata"]["name"].endswith("grafana-dashboard")]
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(cm["metadata"]["annotations"], {"grafana_folder": "ordermesh"})
        self.assertEqual(json.loads(cm["data"]["ordermesh.json"]), json.loads(GRAFANA_SOURCE.read_text()))

    def test_dashboard_copy_equals_the_source(self):
        self.assertEqual(
            GRAFANA_COPY.read_bytes(),
            GRAFANA_SOURCE.read_bytes(),
            f"{GRAFANA_COPY.relative_to(ROOT)} differs from {GRAFANA_SOURCE.relative_to(ROOT)}: "
            f"cp {GRAFANA_SOURCE.relative_to(ROOT)} {GRAFANA_COPY.relative_to(ROOT)}",
        )

    def test_servicemonitors_scrape_tls_ports_over_https(self):
        schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
        for sm in by_kind(OPERABLE, "ServiceMonitor"):
            jsonschema.validate(sm, schema)
            component = sm["metadata"]["labels"]["app.kubernetes.io/component"]
            (ep,) = sm["spec"]["endpoints"]
            if component == "relay":
                self.assertNotIn("scheme", ep)
            else:
                self.assertEqual(ep["scheme"], "https")
                self.assertEqual(ep["tlsConfig"]["ca"], {"secret": {"name": "ordermesh-tls", "key": "ca.crt"}})
                self.assertEqual(ep["tlsConfig"]["serverName"], f"{RELEASE}-ordermesh-{component}.ordermesh.svc")

    def test_notes_follow_tls(self):
        def notes(*args):
            out = helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", "ordermesh", *args).stdout
            return out[out.index("NOTES:"):]

        plain = notes(*WITH_SECRET)
        self.assertIn("grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check", plain)
        tls = notes("-f", str(OPERABLE_VALUES))
        self.assertNotIn("-plaintext", tls)
        calls = [line for line in tls.splitlines() if line.strip().startswith("grpcurl ")]
        self.assertEqual(len(calls), 5)
        for line in calls:
            self.assertTrue(line.strip().startswith("grpcurl -insecure "), line)


class JwksUrl(unittest.TestCase):
    def test_jwks_url_is_a_verification_key_source(self):
        self.assertEqual(configmap_data(DEFAULT)["AUTH_JWKS_URL"], "")
        url = "https://idp.example.com/realms/shop/protocol/openid-connect/certs"
        # An identity provider's keys alone verify; processor-svc still
        # signs its own tokens with a key of its own.
        docs = render("--set", f"auth.jwksUrl={url}", "--set", "auth.signingKeySecret=ordermesh-signing", secret=False)
        self.assertEqual(configmap_data(docs)["AUTH_JWKS_URL"], url)
        self.assertIn("auth.jwksUrl", render_fails())
        for bad in ("http://idp.example.com/certs", "idp.example.com/certs", "https://user:pw@idp/certs"):
            self.assertIn("jwksUrl", render_fails(*WITH_SECRET, "--set", f"auth.jwksUrl={bad}"), bad)
        configmap_data(render("--set", "auth.jwksUrl=http://127.0.0.1:8080/certs"))


class Compose(unittest.TestCase):
    def test_jaeger_v2_receives_otlp_from_every_service(self):
        compose = yaml.safe_load(COMPOSE.read_text())
        services = compose["services"]
        jaeger = services["jaeger"]
        self.assertRegex(jaeger["image"], r"^jaegertracing/jaeger:2\.\d+\.\d+$")
        published = {p.rsplit(":", 1)[1] for p in jaeger["ports"]}
        self.assertEqual(published, {"16686", "4317", "4318"})
        for p in jaeger["ports"]:
            self.assertTrue(p.startswith("127.0.0.1:"), p)
        exporters = [name for name, svc in services.items() if "OTEL_SERVICE_NAME" in (svc.get("environment") or {})]
        self.assertEqual(sorted(exporters), ["order-svc", "processor-svc", "relay"])
        for name in exporters:
            env = services[name]["environment"]
            self.assertEqual(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger:4317", name)
            self.assertIn("jaeger", services[name]["depends_on"], name)


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2 if "-v" in sys.argv else 1)
    finally:
        shutil.rmtree(HELM_HOME, ignore_errors=True)
