# ruff: noqa: E501 - a table of cases reads best one case per line
"""Every validation rule of the bundle kinds, each with a failing case: file, path, message."""

from __future__ import annotations

from typing import Any

import pytest
from kat_docs import DELETE, files_for, problems_of

W = "workload.kat"
V = "VirtualLoadBalancer.kat"
J = "JobDefinition.kat"
B = "BuildDefinition.kat"

CASES: list[tuple[str, dict[str, Any], str]] = [
    # --- envelope
    (W, {"apiVersion": DELETE}, 'workload.kat: apiVersion: required: "kat.dws.rip/v1alpha1"'),
    (W, {"apiVersion": "v1"}, 'workload.kat: apiVersion: must be "kat.dws.rip/v1alpha1", got "v1"'),
    (
        W,
        {"kind": "Deployment"},
        'workload.kat: kind: must be Workload in workload.kat, got "Deployment"',
    ),
    (W, {"kind": DELETE}, "workload.kat: kind: required: Workload"),
    (W, {"metadata": DELETE}, "workload.kat: metadata: required"),
    (W, {"metadata.name": DELETE}, "workload.kat: metadata.name: required"),
    (W, {"metadata.name": "Web"}, 'workload.kat: metadata.name: "Web" is not a valid name'),
    (W, {"metadata.name": "-web"}, 'workload.kat: metadata.name: "-web" is not a valid name'),
    (W, {"metadata.name": "web-"}, 'workload.kat: metadata.name: "web-" is not a valid name'),
    (W, {"metadata.name": "we.b"}, 'workload.kat: metadata.name: "we.b" is not a valid name'),
    (
        W,
        {"metadata.name": "a" * 64},
        "workload.kat: metadata.name: " + '"' + "a" * 64 + '" is longer than 63',
    ),
    (
        W,
        {"metadata.namespace": "Team_A"},
        'workload.kat: metadata.namespace: "Team_A" is not a valid name',
    ),
    (
        W,
        {"metadata.labels": {"a b": "x"}},
        'workload.kat: metadata.labels["a b"]: invalid key "a b"',
    ),
    (
        W,
        {"metadata.labels": {"x": "bad value!"}},
        'workload.kat: metadata.labels.x: invalid value "bad value!"',
    ),
    (
        W,
        {"metadata.labels": {"Bad_Prefix/x": "y"}},
        'workload.kat: metadata.labels["Bad_Prefix/x"]: invalid key',
    ),
    (W, {"metadata.uid2": "x"}, "workload.kat: metadata.uid2: unknown field"),
    (W, {"spce": {}}, 'workload.kat: spce: unknown field (did you mean "spec"?)'),
    # --- structure and types
    (W, {"spec.container.imagee": "x"}, "workload.kat: spec.container.imagee: unknown field"),
    (
        W,
        {"spec.container.volume_mounts": []},
        'workload.kat: spec.container.volume_mounts: unknown field (did you mean "volumeMounts"?)',
    ),
    (W, {"spec.replicas": "3"}, "workload.kat: spec.replicas: expected an integer, got string"),
    (W, {"spec.replicas": True}, "workload.kat: spec.replicas: expected an integer, got boolean"),
    (W, {"spec.replicas": 2.5}, "workload.kat: spec.replicas: expected an integer, got number"),
    (W, {"spec.replicas": 2**31}, "workload.kat: spec.replicas: 2147483648 is out of range"),
    (W, {"spec.replicas": None}, "workload.kat: spec.replicas: missing value"),
    (W, {"metadata.labels": ["a"]}, "workload.kat: metadata.labels: expected a mapping, got list"),
    (
        W,
        {"spec.container.command": {"a": "b"}},
        "workload.kat: spec.container.command: expected a list, got mapping",
    ),
    (
        W,
        {"spec.container.command": ["sleep", 5]},
        'workload.kat: spec.container.command[1]: expected a string, got integer (quote it: "5")',
    ),
    (
        W,
        {"spec.container.env": [{"name": "A", "value": True}]},
        'workload.kat: spec.container.env[0].value: expected a string, got boolean (quote it: "true")',
    ),
    (W, {"spec.source": "busybox"}, "workload.kat: spec.source: expected a mapping, got string"),
    (
        W,
        {"spec.nodeSelector": {"zone": 1}},
        "workload.kat: spec.nodeSelector.zone: expected a string, got integer",
    ),
    (
        W,
        {
            "spec.container.volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": "yes"}],
            "spec.volumes": [{"name": "v", "simpleClusterStorage": {}}],
        },
        "workload.kat: spec.container.volumeMounts[0].readOnly: expected true or false, got string",
    ),
    (
        W,
        {"spec.type": "SERVIC"},
        'workload.kat: spec.type: invalid value "SERVIC": must be one of SERVICE, JOB, DAEMON_SERVICE',
    ),
    (
        W,
        {"spec.type": "TYPE_UNSPECIFIED"},
        'workload.kat: spec.type: invalid value "TYPE_UNSPECIFIED": must be one of SERVICE, JOB, DAEMON_SERVICE',
    ),
    (
        W,
        {"spec.type": 1},
        "workload.kat: spec.type: expected one of SERVICE, JOB, DAEMON_SERVICE, got integer",
    ),
    (
        W,
        {"spec.updateStrategy": {"type": "BLUE_GREEN"}},
        'workload.kat: spec.updateStrategy.type: invalid value "BLUE_GREEN": must be one of ROLLING, SIMULTANEOUS',
    ),
    (
        W,
        {"spec.restartPolicy": {"condition": "SOMETIMES"}},
        'workload.kat: spec.restartPolicy.condition: invalid value "SOMETIMES": must be one of ALWAYS, NEVER, MAX_COUNT',
    ),
    (
        W,
        {"spec.tolerations": [{"key": "k", "operator": "IN"}]},
        'workload.kat: spec.tolerations[0].operator: invalid value "IN": must be one of EQUAL, EXISTS',
    ),
    (
        W,
        {"spec.tolerations": [{"key": "k", "effect": "NO_EXECUTE"}]},
        'workload.kat: spec.tolerations[0].effect: invalid value "NO_EXECUTE": must be one of NO_SCHEDULE, PREFER_NO_SCHEDULE',
    ),
    (
        W,
        {"spec.container.resources": {"gpu": {"driver": "INTEL"}}},
        'workload.kat: spec.container.resources.gpu.driver: invalid value "INTEL": must be one of ANY, NVIDIA, AMD',
    ),
    (
        W,
        {"spec.container.resources": {"gpu": {"minVramMb": 1}}},
        'workload.kat: spec.container.resources.gpu.minVramMb: unknown field (did you mean "minVRAM_MB"?)',
    ),
    (
        W,
        {"spec.container.resources": {"gpu": {"minVRAM_MB": -1}}},
        "workload.kat: spec.container.resources.gpu.minVRAM_MB: must be >= 0, got -1",
    ),
    (
        W,
        {"spec.volumes": [{"name": "v", "hostMount": {"hostPath": "/x", "ensureType": "PIPE"}}]},
        'workload.kat: spec.volumes[0].hostMount.ensureType: invalid value "PIPE": must be one of DIRECTORY_OR_CREATE, DIRECTORY, FILE_OR_CREATE, FILE, SOCKET',
    ),
    # --- workload: required fields
    (W, {"spec": DELETE}, "workload.kat: spec: required"),
    (
        W,
        {"spec.type": DELETE},
        "workload.kat: spec.type: required: one of SERVICE, JOB, DAEMON_SERVICE",
    ),
    (W, {"spec.source": DELETE}, "workload.kat: spec.source: required: set either image or git"),
    (W, {"spec.source": {}}, "workload.kat: spec.source: required: set either image or git"),
    (W, {"spec.source.image": ""}, "workload.kat: spec.source.image: required"),
    (W, {"spec.container": DELETE}, "workload.kat: spec.container: required"),
    # --- workload: source
    (
        W,
        {"spec.source.image": "Not An Image"},
        'workload.kat: spec.source.image: "Not An Image" is not a valid image reference',
    ),
    (
        W,
        {"spec.source.image": "busybox:"},
        'workload.kat: spec.source.image: "busybox:" is not a valid image reference',
    ),
    (
        W,
        {"spec.source.git": {"repository": "https://x/y.git"}},
        "workload.kat: spec.source.git: cannot be set together with image",
    ),
    (W, {"spec.source": {"git": {}}}, "workload.kat: spec.source.git.repository: required"),
    (
        W,
        {"spec.source": {"git": {"repository": "--upload-pack=evil"}}},
        'workload.kat: spec.source.git.repository: "--upload-pack=evil" is not a valid repository URL',
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "ftp://x/y"}}},
        'workload.kat: spec.source.git.repository: "ftp://x/y" is not a valid repository URL: use https://',
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "https://x/y", "branch": "main", "tag": "v1"}}},
        "workload.kat: spec.source.git.tag: set either branch or tag, not both",
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "https://x/y", "branch": "a..b"}}},
        'workload.kat: spec.source.git.branch: "a..b" is not a valid git branch name',
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "https://x/y", "tag": "-v1"}}},
        'workload.kat: spec.source.git.tag: "-v1" is not a valid git tag name',
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "https://x/y", "commit": "HEAD~1"}}},
        'workload.kat: spec.source.git.commit: "HEAD~1" is not a commit hash',
    ),
    (
        W,
        {"spec.source.cacheImage": "registry:5000/x"},
        "workload.kat: spec.source.cacheImage: only used with spec.source.git",
    ),
    (
        W,
        {"spec.source": {"git": {"repository": "https://x/y"}, "cacheImage": "registry:5000/x:v1"}},
        'workload.kat: spec.source.cacheImage: "registry:5000/x:v1" is not a valid repository (without tag or digest)',
    ),
    # --- workload: replicas, strategies
    (W, {"spec.replicas": -1}, "workload.kat: spec.replicas: must be >= 0, got -1"),
    (
        W,
        {"spec.type": "DAEMON_SERVICE", "spec.replicas": 2},
        "workload.kat: spec.replicas: not allowed with DAEMON_SERVICE",
    ),
    (W, {"spec.type": "JOB", "spec.replicas": 2}, "workload.kat: spec.replicas: not used by JOB"),
    (
        W,
        {"spec.type": "JOB", "spec.updateStrategy": {"type": "ROLLING"}},
        "workload.kat: spec.updateStrategy: not used by JOB",
    ),
    (
        W,
        {"spec.updateStrategy": {"type": "SIMULTANEOUS", "maxSurge": 1}},
        "workload.kat: spec.updateStrategy.maxSurge: only used with ROLLING",
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": "two"}},
        'workload.kat: spec.updateStrategy.maxSurge: "two" must be a count ("1") or a percentage ("25%")',
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": 0}},
        "workload.kat: spec.updateStrategy.maxSurge: must be at least 1",
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": "0%"}},
        "workload.kat: spec.updateStrategy.maxSurge: must be at least 1",
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": "150%"}},
        'workload.kat: spec.updateStrategy.maxSurge: "150%" is more than 100%',
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": 1.5}},
        'workload.kat: spec.updateStrategy.maxSurge: "1.5" must be a count',
    ),
    (
        W,
        {"spec.updateStrategy": {"maxSurge": ""}},
        "workload.kat: spec.updateStrategy.maxSurge: must not be empty",
    ),
    (
        W,
        {"spec.restartPolicy": {"condition": "MAX_COUNT"}},
        "workload.kat: spec.restartPolicy.maxRestarts: required with MAX_COUNT",
    ),
    (
        W,
        {"spec.restartPolicy": {"condition": "MAX_COUNT", "maxRestarts": 0}},
        "workload.kat: spec.restartPolicy.maxRestarts: must be >= 1, got 0",
    ),
    (
        W,
        {"spec.restartPolicy": {"condition": "MAX_COUNT", "maxRestarts": 3, "resetSeconds": -5}},
        "workload.kat: spec.restartPolicy.resetSeconds: must be >= 0, got -5",
    ),
    (
        W,
        {"spec.restartPolicy": {"condition": "ALWAYS", "maxRestarts": 3}},
        "workload.kat: spec.restartPolicy.maxRestarts: only used with MAX_COUNT",
    ),
    (
        W,
        {"spec.restartPolicy": {"resetSeconds": 60}},
        "workload.kat: spec.restartPolicy.condition: required with maxRestarts/resetSeconds",
    ),
    (
        W,
        {"spec.type": "JOB", "spec.restartPolicy": {"condition": "ALWAYS"}},
        "workload.kat: spec.restartPolicy.condition: ALWAYS is not allowed for JOB",
    ),
    # --- workload: scheduling constraints
    (
        W,
        {"spec.nodeSelector": {"disk type": "ssd"}},
        'workload.kat: spec.nodeSelector["disk type"]: invalid key "disk type"',
    ),
    (
        W,
        {"spec.nodeSelector": {"disk": "fast ssd"}},
        'workload.kat: spec.nodeSelector.disk: invalid value "fast ssd"',
    ),
    (
        W,
        {"spec.tolerations": [{"operator": "EXISTS", "value": "x"}]},
        "workload.kat: spec.tolerations[0].value: must be empty with operator EXISTS",
    ),
    (
        W,
        {"spec.tolerations": [{"value": "x"}]},
        "workload.kat: spec.tolerations[0].key: required with operator EQUAL",
    ),
    (
        W,
        {"spec.tolerations": [{"key": "bad key", "operator": "EXISTS"}]},
        'workload.kat: spec.tolerations[0].key: invalid key "bad key"',
    ),
    # --- workload: container
    (
        W,
        {"spec.container.name": "Main"},
        'workload.kat: spec.container.name: "Main" is not a valid name',
    ),
    (
        W,
        {"spec.container.env": [{"name": "1X", "value": "a"}]},
        'workload.kat: spec.container.env[0].name: "1X" is not a valid environment variable name',
    ),
    (
        W,
        {"spec.container.env": [{"name": "A-B"}]},
        'workload.kat: spec.container.env[0].name: "A-B" is not a valid environment variable name',
    ),
    (
        W,
        {"spec.container.env": [{"value": "a"}]},
        "workload.kat: spec.container.env[0].name: required",
    ),
    (
        W,
        {"spec.container.env": [{"name": "A"}, {"name": "B"}, {"name": "A"}]},
        'workload.kat: spec.container.env[2].name: duplicate env var "A" (also env[0])',
    ),
    (
        W,
        {"spec.container.volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        'workload.kat: spec.container.volumeMounts[0].name: no volume named "data" in spec.volumes',
    ),
    (
        W,
        {"spec.container.volumeMounts": [{"mountPath": "/data"}]},
        "workload.kat: spec.container.volumeMounts[0].name: required",
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d", "mountPath": "data"}],
        },
        'workload.kat: spec.container.volumeMounts[0].mountPath: "data" must be an absolute path',
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d"}],
        },
        "workload.kat: spec.container.volumeMounts[0].mountPath: required",
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d", "mountPath": "/"}],
        },
        "workload.kat: spec.container.volumeMounts[0].mountPath: must not be /",
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d", "mountPath": "/a/../etc"}],
        },
        'workload.kat: spec.container.volumeMounts[0].mountPath: "/a/../etc" must not contain ".."',
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [
                {"name": "d", "mountPath": "/x"},
                {"name": "d", "mountPath": "/x/"},
            ],
        },
        'workload.kat: spec.container.volumeMounts[1].mountPath: "/x/" is already mounted by volumeMounts[0]',
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d", "mountPath": "/x", "subPath": "../up"}],
        },
        'workload.kat: spec.container.volumeMounts[0].subPath: "../up" must not contain ".."',
    ),
    (
        W,
        {
            "spec.volumes": [{"name": "d", "simpleClusterStorage": {}}],
            "spec.container.volumeMounts": [{"name": "d", "mountPath": "/x", "subPath": "/abs"}],
        },
        'workload.kat: spec.container.volumeMounts[0].subPath: "/abs" must be a relative path',
    ),
    # --- workload: resources
    (
        W,
        {"spec.container.resources": {"requests": {"cpu": "1.5x"}}},
        'workload.kat: spec.container.resources.requests.cpu: invalid cpu quantity "1.5x"',
    ),
    (
        W,
        {"spec.container.resources": {"requests": {"cpu": "0.0001"}}},
        'workload.kat: spec.container.resources.requests.cpu: invalid cpu quantity "0.0001": finer than 1m',
    ),
    (
        W,
        {"spec.container.resources": {"limits": {"memory": "64MB"}}},
        'workload.kat: spec.container.resources.limits.memory: invalid memory quantity "64MB": unknown suffix "MB"',
    ),
    (
        W,
        {"spec.container.resources": {"limits": {"memory": True}}},
        "workload.kat: spec.container.resources.limits.memory: expected a string, got boolean",
    ),
    (
        W,
        {"spec.container.resources": {"limits": {"cpu": "0"}}},
        "workload.kat: spec.container.resources.limits.cpu: must be greater than 0",
    ),
    (
        W,
        {"spec.container.resources": {"requests": {"cpu": 2}, "limits": {"cpu": "500m"}}},
        "workload.kat: spec.container.resources.limits.cpu: must be >= requests.cpu (2)",
    ),
    (
        W,
        {
            "spec.container.resources": {
                "requests": {"memory": "1Gi"},
                "limits": {"memory": "512Mi"},
            }
        },
        "workload.kat: spec.container.resources.limits.memory: must be >= requests.memory (1Gi)",
    ),
    (
        W,
        {"spec.container.resources": {"requests": {"cpu": ""}}},
        "workload.kat: spec.container.resources.requests.cpu: must not be empty",
    ),
    # --- workload: volumes
    (
        W,
        {"spec.volumes": [{"name": "d"}]},
        "workload.kat: spec.volumes[0]: one of simpleClusterStorage or hostMount is required",
    ),
    (
        W,
        {"spec.volumes": [{"simpleClusterStorage": {}}]},
        "workload.kat: spec.volumes[0].name: required",
    ),
    (
        W,
        {"spec.volumes": [{"name": "D", "simpleClusterStorage": {}}]},
        'workload.kat: spec.volumes[0].name: "D" is not a valid name',
    ),
    (
        W,
        {
            "spec.volumes": [
                {"name": "d", "simpleClusterStorage": {}},
                {"name": "d", "simpleClusterStorage": None},
            ]
        },
        'workload.kat: spec.volumes[1].name: duplicate volume "d" (also spec.volumes[0])',
    ),
    (
        W,
        {
            "spec.volumes": [
                {"name": "d", "simpleClusterStorage": {}, "hostMount": {"hostPath": "/x"}}
            ]
        },
        "workload.kat: spec.volumes[0].hostMount: cannot be set together with simpleClusterStorage",
    ),
    (
        W,
        {"spec.volumes": [{"name": "d", "hostMount": {"hostPath": "var/x"}}]},
        'workload.kat: spec.volumes[0].hostMount.hostPath: "var/x" must be an absolute path',
    ),
    (
        W,
        {"spec.volumes": [{"name": "d", "hostMount": {}}]},
        "workload.kat: spec.volumes[0].hostMount.hostPath: required",
    ),
    # --- VirtualLoadBalancer
    (
        V,
        {"spec.ports[0].containerPort": 0},
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: 0 is not a valid port (1-65535)",
    ),
    (
        V,
        {"spec.ports[0].containerPort": 65536},
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: 65536 is not a valid port (1-65535)",
    ),
    (
        V,
        {"spec.ports[0].containerPort": -80},
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: -80 is not a valid port",
    ),
    (
        V,
        {"spec.ports[0].containerPort": DELETE},
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: required",
    ),
    (
        V,
        {"spec.ports[0].containerPort": "8080"},
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: expected an integer, got string",
    ),
    (
        V,
        {"spec.ports[0].protocol": "SCTP"},
        'VirtualLoadBalancer.kat: spec.ports[0].protocol: invalid value "SCTP": must be one of TCP, UDP',
    ),
    (
        V,
        {"spec.ports[0].name": "HTTP"},
        'VirtualLoadBalancer.kat: spec.ports[0].name: "HTTP" is not a valid name',
    ),
    (
        V,
        {"spec.ports": [{"name": "a", "containerPort": 80}, {"name": "a", "containerPort": 81}]},
        'VirtualLoadBalancer.kat: spec.ports[1].name: duplicate port name "a" (also ports[0])',
    ),
    (
        V,
        {
            "spec.ports": [
                {"name": "a", "containerPort": 80},
                {"name": "b", "containerPort": 80, "protocol": "tcp"},
            ]
        },
        "VirtualLoadBalancer.kat: spec.ports[1].containerPort: duplicate port 80/TCP (also ports[0])",
    ),
    (
        V,
        {"spec.ports": [{"containerPort": 80}, {"name": "b", "containerPort": 81}]},
        "VirtualLoadBalancer.kat: spec.ports[0].name: required when there is more than one port",
    ),
    (
        V,
        {"spec.healthCheck": {"periodSeconds": 5}},
        "VirtualLoadBalancer.kat: spec.healthCheck.exec.command: required",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "periodSeconds": 0}},
        "VirtualLoadBalancer.kat: spec.healthCheck.periodSeconds: must be >= 1, got 0",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "timeoutSeconds": -1}},
        "VirtualLoadBalancer.kat: spec.healthCheck.timeoutSeconds: must be >= 1, got -1",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "successThreshold": 0}},
        "VirtualLoadBalancer.kat: spec.healthCheck.successThreshold: must be >= 1, got 0",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "failureThreshold": 0}},
        "VirtualLoadBalancer.kat: spec.healthCheck.failureThreshold: must be >= 1, got 0",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "initialDelaySeconds": -3}},
        "VirtualLoadBalancer.kat: spec.healthCheck.initialDelaySeconds: must be >= 0, got -3",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": ["true"]}, "timeoutSeconds": 20}},
        "VirtualLoadBalancer.kat: spec.healthCheck.timeoutSeconds: 20 must not exceed periodSeconds (10)",
    ),
    (
        V,
        {"spec.healthCheck": {"exec": {"command": "true"}}},
        "VirtualLoadBalancer.kat: spec.healthCheck.exec.command: expected a list, got string",
    ),
    (
        V,
        {"spec.ingress": [{"path": "/"}]},
        "VirtualLoadBalancer.kat: spec.ingress[0].host: required",
    ),
    (
        V,
        {"spec.ingress": [{"host": "Web.Example"}]},
        'VirtualLoadBalancer.kat: spec.ingress[0].host: "Web.Example" is not a valid lower-case host name',
    ),
    (
        V,
        {"spec.ingress": [{"host": "web.example", "path": "api"}]},
        'VirtualLoadBalancer.kat: spec.ingress[0].path: "api" must start with /',
    ),
    (
        V,
        {"spec.ingress": [{"host": "w.example", "servicePortName": "grpc"}]},
        'VirtualLoadBalancer.kat: spec.ingress[0].servicePortName: no port named "grpc" in spec.ports',
    ),
    (
        V,
        {"spec.ingress": [{"host": "w.example", "servicePort": 9999}]},
        "VirtualLoadBalancer.kat: spec.ingress[0].servicePort: no containerPort 9999 in spec.ports",
    ),
    (
        V,
        {"spec.ingress": [{"host": "w.example", "servicePort": 8080, "servicePortName": "http"}]},
        "VirtualLoadBalancer.kat: spec.ingress[0].servicePort: set either servicePortName or servicePort, not both",
    ),
    (
        V,
        {
            "spec.ports": [{"name": "a", "containerPort": 80}, {"name": "b", "containerPort": 81}],
            "spec.ingress": [{"host": "w.example"}],
        },
        "VirtualLoadBalancer.kat: spec.ingress[0]: servicePortName or servicePort is required when there is more than one port",
    ),
    (
        V,
        {"spec.ports": [], "spec.ingress": [{"host": "w.example"}]},
        "VirtualLoadBalancer.kat: spec.ingress[0]: needs a port: spec.ports is empty",
    ),
    (
        V,
        {"spec.ingress": [{"host": "w.example"}, {"host": "w.example", "path": "/"}]},
        "VirtualLoadBalancer.kat: spec.ingress[1]: duplicate rule for w.example/ (also ingress[0])",
    ),
    (
        V,
        {"spec.ingress": [{"host": "w.example", "tls": "yes"}]},
        "VirtualLoadBalancer.kat: spec.ingress[0].tls: expected true or false, got string",
    ),
    # --- JobDefinition
    (
        J,
        {"spec.schedule": "61 * * * *"},
        'JobDefinition.kat: spec.schedule: minute field "61": 61 out of range 0-59',
    ),
    (J, {"spec.schedule": "* * * *"}, "JobDefinition.kat: spec.schedule: invalid schedule"),
    (
        J,
        {"spec.schedule": "@every 0s"},
        'JobDefinition.kat: spec.schedule: invalid duration "0s": must be at least 1s',
    ),
    (
        J,
        {"spec.schedule": "@fortnightly"},
        'JobDefinition.kat: spec.schedule: unknown schedule "@fortnightly"',
    ),
    (J, {"spec.schedule": ""}, "JobDefinition.kat: spec.schedule: empty schedule"),
    (J, {"spec.schedule": 5}, "JobDefinition.kat: spec.schedule: expected a string, got integer"),
    (J, {"spec.completions": 0}, "JobDefinition.kat: spec.completions: must be >= 1, got 0"),
    (J, {"spec.parallelism": 0}, "JobDefinition.kat: spec.parallelism: must be >= 1, got 0"),
    (J, {"spec.backoffLimit": -1}, "JobDefinition.kat: spec.backoffLimit: must be >= 0, got -1"),
    (
        J,
        {"spec.activeDeadlineSeconds": 0},
        "JobDefinition.kat: spec.activeDeadlineSeconds: must be >= 1, got 0",
    ),
    (J, {"spec.retries": 3}, "JobDefinition.kat: spec.retries: unknown field"),
    # --- BuildDefinition
    (
        B,
        {"spec.buildContext": "/src"},
        'BuildDefinition.kat: spec.buildContext: "/src" must be a relative path',
    ),
    (
        B,
        {"spec.dockerfilePath": "../Dockerfile"},
        'BuildDefinition.kat: spec.dockerfilePath: "../Dockerfile" must not contain ".."',
    ),
    (
        B,
        {"spec.buildArgs": {"MY-ARG": "1"}},
        'BuildDefinition.kat: spec.buildArgs.MY-ARG: "MY-ARG" is not a valid build argument name',
    ),
    (
        B,
        {"spec.buildArgs": {"VERSION": 1}},
        'BuildDefinition.kat: spec.buildArgs.VERSION: expected a string, got integer (quote it: "1")',
    ),
    (
        B,
        {"spec.targetStage": "-x"},
        'BuildDefinition.kat: spec.targetStage: "-x" is not a valid stage name',
    ),
    (
        B,
        {"spec.platform": "amd64"},
        'BuildDefinition.kat: spec.platform: "amd64" must look like os/arch[/variant]',
    ),
    (B, {"spec.cache": {}}, "BuildDefinition.kat: spec.cache.registryPath: required"),
    (
        B,
        {"spec.cache": {"registryPath": "Registry/X"}},
        'BuildDefinition.kat: spec.cache.registryPath: "Registry/X" is not a valid repository',
    ),
]


@pytest.mark.parametrize(("file", "edits", "expected"), CASES, ids=[c[2][:80] for c in CASES])
def test_rule(file: str, edits: dict[str, Any], expected: str) -> None:
    problems = problems_of(files_for(file, edits))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("file", "edits"),
    [
        (W, {"spec.type": "daemon_service"}),  # enums are case-insensitive
        (W, {"spec.type": " Service "}),
        (W, {"spec.replicas": 0}),
        (W, {"spec.updateStrategy": {"type": "rolling", "maxSurge": "25%"}}),
        (W, {"spec.updateStrategy": {"maxSurge": 2}}),
        (W, {"spec.updateStrategy": {"type": "SIMULTANEOUS"}}),
        (
            W,
            {"spec.restartPolicy": {"condition": "MAX_COUNT", "maxRestarts": 3, "resetSeconds": 0}},
        ),
        (
            W,
            {
                "spec.container.resources": {
                    "requests": {"cpu": 0.5, "memory": 1048576},
                    "limits": {"cpu": 1},
                }
            },
        ),
        (W, {"spec.container.resources": {"gpu": {"driver": "nvidia", "minVRAM_MB": 8192}}}),
        (W, {"spec.tolerations": [{"operator": "EXISTS"}]}),
        (W, {"spec.nodeSelector": {"kat.dws.rip/ingress": "true"}}),
        (W, {"spec.source.image": "registry.example:5000/team/app@sha256:" + "a" * 64}),
        (
            W,
            {
                "spec.source": {
                    "git": {
                        "repository": "git@github.com:me/app.git",
                        "tag": "v1.2",
                        "commit": "abc1234",
                    }
                }
            },
        ),
        (W, {"spec.source": {"git": {"repository": "file:///srv/git/app"}}}),
        (
            W,
            {
                "metadata.namespace": "team-a",
                "metadata.labels": {"app.kubernetes.io/name": "web", "empty": ""},
            },
        ),
        (
            W,
            {
                "metadata.creationTimestamp": "2024-01-02T03:04:05Z",
                "metadata.uid": "u",
                "metadata.generation": 3,
            },
        ),
        (
            V,
            {
                "spec.ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53},
                ]
            },
        ),
        (V, {"spec.ingress": [{"host": "*.example.com", "path": "/api", "tls": True}]}),
        (J, {"spec.schedule": "@every 90s", "spec.backoffLimit": 0}),
        (J, {"spec.schedule": DELETE}),
        (B, {"spec": {}}),
    ],
)
def test_valid_variants(file: str, edits: dict[str, Any]) -> None:
    assert problems_of(files_for(file, edits)) == []
