"""The Kubernetes manifest and the image: they must match what the exporter serves."""

from __future__ import annotations

import re
from typing import Any

import yaml

import exporter
from mongo_store import Location, MetricsStore
from tests.servers import REPO, free_port
from tests.test_exporter import Exporter, expected_samples, parse_text, served_samples

MANIFEST = REPO / "deploy" / "telemetry-gateway-deployment.yaml"
DOCKERFILE = REPO / "Dockerfile"


def manifest() -> dict[str, dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return {doc["kind"]: doc for doc in documents}


def container() -> dict[str, Any]:
    (only,) = manifest()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def container_port(name_or_number: str | int) -> int:
    for port in container()["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            return port["containerPort"]
    raise AssertionError(f"no container port {name_or_number!r}")


def manifest_args() -> Any:
    return exporter.build_parser().parse_args(container()["args"])


def test_manifest_holds_a_deployment_and_its_service() -> None:
    kinds = manifest()
    assert set(kinds) == {"Deployment", "Service"}
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["replicas"] == 1


def test_ports_and_scrape_annotations_match_the_arguments() -> None:
    args = manifest_args()
    annotations = manifest()["Deployment"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert container_port("metrics") == args.port
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == args.port
    assert annotations["prometheus.io/path"] == "/metrics"
    (service_port,) = manifest()["Service"]["spec"]["ports"]
    assert container_port(service_port["targetPort"]) == args.port
    assert re.search(rf"^EXPOSE {args.port}$", DOCKERFILE.read_text(), re.M)


def test_probes_use_the_health_endpoints() -> None:
    spec = container()
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A slow MongoDB must make /readyz answer 503, not time the probe out.
    assert spec["readinessProbe"]["timeoutSeconds"] > float(manifest_args().timeout)


def test_pod_runs_unprivileged_with_limits_and_a_secret_uri() -> None:
    spec = container()
    pod = manifest()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= spec["resources"][kind].keys()
    (uri,) = [item for item in spec["env"] if item["name"] == "MONGODB_URI"]
    assert "value" not in uri
    assert uri["valueFrom"]["secretKeyRef"]["key"]
    assert not any("mongodb://" in arg for arg in spec["args"])


def test_every_setting_is_one_the_exporter_reads() -> None:
    help_text = exporter.build_parser().format_help()
    for item in container()["env"]:
        assert item["name"] in help_text
    manifest_args()  # argparse exits on an unknown argument


def test_the_image_runs_the_console_script() -> None:
    dockerfile = DOCKERFILE.read_text()
    image = container()["image"]
    assert f"docker build -t {image} ." in dockerfile
    entrypoint = re.search(r"^ENTRYPOINT \[\"([^\"]+)\"\]$", dockerfile, re.M)
    assert entrypoint is not None
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'{entrypoint.group(1)} = "exporter:main"' in pyproject
    assert re.search(r"^USER [1-9]\d*", dockerfile, re.M)


def test_the_exporter_serves_what_the_manifest_probes(
    mongo_uri: str, location: Location
) -> None:
    document = {"total_action_train_pass": 3, 'tao_job_total{tao_action="x"}': 2}
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
    port = free_port()
    # The manifest's own arguments, with a free local port instead of its own.
    args = [
        re.sub(r"^--port=.*", f"--port={port}", arg).replace(
            "--listen-address=0.0.0.0", "--listen-address=127.0.0.1"
        )
        for arg in container()["args"]
    ]
    env = {"MONGODB_URI": mongo_uri, "MONGODB_DB": location.db}
    running = Exporter(*args, env=env, port=port).start()
    try:
        spec = container()
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = spec[probe]["httpGet"]["path"]
            assert running.get(path)[0] == 200, f"{probe} {path}"
        path = manifest()["Deployment"]["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/path"
        ]
        status, _, body = running.get(path)
        assert status == 200
        assert served_samples(parse_text(body)) == expected_samples(document)
    finally:
        assert running.stop() == 0, running.output
