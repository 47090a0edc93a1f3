"""A synthetic cluster as manifests, and the dnsperf query file that goes with it.

The same data feeds every server of a benchmark run: kdns reads the manifests, the baselines
serve `kdns records` of them, so every server answers the same names with the same records.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    services: int = 1000  # ClusterIP services, one named port each
    headless: int = 100  # headless services
    endpoints: int = 5  # ready endpoints per headless service


def write_manifests(directory: Path, shape: Shape) -> None:
    """One JSON List per kind of service, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, object]] = []
    for i in range(shape.services):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 20}"},
                "spec": {
                    "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                },
            }
        )
    for i in range(shape.headless):
        name, ns = f"db-{i}", f"ns-{i % 20}"
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abc",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": [f"10.{100 + i // 250}.{i % 250}.{e + 1}"], "hostname": f"db-{e}"}
                    for e in range(shape.endpoints)
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }
        )
    doc = {"apiVersion": "v1", "kind": "List", "items": items}
    (directory / "cluster.json").write_text(json.dumps(doc))


def _mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def query_lines(shape: Shape, count: int = 20000, seed: int = 1) -> list[str]:
    """dnsperf input: ClusterIP A, headless A, SRV, NXDOMAIN, PTR and mixed-case names."""
    rng = random.Random(seed)
    zone = "cluster.local"
    lines = []
    for _ in range(count):
        pick = rng.random()
        i = rng.randrange(shape.services)
        h = rng.randrange(max(1, shape.headless))
        if pick < 0.40:
            lines.append(f"svc-{i}.ns-{i % 20}.svc.{zone} A")
        elif pick < 0.55:
            lines.append(f"db-{h}.ns-{h % 20}.svc.{zone} A")
        elif pick < 0.65:
            lines.append(f"_pg._tcp.db-{h}.ns-{h % 20}.svc.{zone} SRV")
        elif pick < 0.75:
            lines.append(f"missing-{i}.ns-{i % 20}.svc.{zone} A")
        elif pick < 0.85:
            lines.append(f"{i % 250 + 1}.{i // 250}.96.10.in-addr.arpa PTR")
        else:
            lines.append(f"{_mixed_case(f'svc-{i}.ns-{i % 20}.svc.{zone}', rng)} A")
    return lines
