import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectMeta(_message.Message):
    __slots__ = ("name", "namespace", "labels", "annotations", "uid", "generation", "resource_version", "creation_timestamp")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    uid: str
    generation: int
    resource_version: int
    creation_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., uid: _Optional[str] = ..., generation: _Optional[int] = ..., resource_version: _Optional[int] = ..., creation_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GitSource(_message.Message):
    __slots__ = ("repository", "branch", "tag", "commit")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    repository: str
    branch: str
    tag: str
    commit: str
    def __init__(self, repository: _Optional[str] = ..., branch: _Optional[str] = ..., tag: _Optional[str] = ..., commit: _Optional[str] = ...) -> None: ...

class WorkloadSource(_message.Message):
    __slots__ = ("image", "git", "cache_image")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    CACHE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: str
    git: GitSource
    cache_image: str
    def __init__(self, image: _Optional[str] = ..., git: _Optional[_Union[GitSource, _Mapping]] = ..., cache_image: _Optional[str] = ...) -> None: ...

class UpdateStrategy(_message.Message):
    __slots__ = ("type", "max_surge", "progress_deadline_seconds")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[UpdateStrategy.Type]
        ROLLING: _ClassVar[UpdateStrategy.Type]
        SIMULTANEOUS: _ClassVar[UpdateStrategy.Type]
    TYPE_UNSPECIFIED: UpdateStrategy.Type
    ROLLING: UpdateStrategy.Type
    SIMULTANEOUS: UpdateStrategy.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SURGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    type: UpdateStrategy.Type
    max_surge: str
    progress_deadline_seconds: int
    def __init__(self, type: _Optional[_Union[UpdateStrategy.Type, str]] = ..., max_surge: _Optional[str] = ..., progress_deadline_seconds: _Optional[int] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("condition", "max_restarts", "reset_seconds")
    class Condition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONDITION_UNSPECIFIED: _ClassVar[RestartPolicy.Condition]
        ALWAYS: _ClassVar[RestartPolicy.Condition]
        NEVER: _ClassVar[RestartPolicy.Condition]
        MAX_COUNT: _ClassVar[RestartPolicy.Condition]
    CONDITION_UNSPECIFIED: RestartPolicy.Condition
    ALWAYS: RestartPolicy.Condition
    NEVER: RestartPolicy.Condition
    MAX_COUNT: RestartPolicy.Condition
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    condition: RestartPolicy.Condition
    max_restarts: int
    reset_seconds: int
    def __init__(self, condition: _Optional[_Union[RestartPolicy.Condition, str]] = ..., max_restarts: _Optional[int] = ..., reset_seconds: _Optional[int] = ...) -> None: ...

class Toleration(_message.Message):
    __slots__ = ("key", "operator", "value", "effect")
    class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OPERATOR_UNSPECIFIED: _ClassVar[Toleration.Operator]
        EQUAL: _ClassVar[Toleration.Operator]
        EXISTS: _ClassVar[Toleration.Operator]
    OPERATOR_UNSPECIFIED: Toleration.Operator
    EQUAL: Toleration.Operator
    EXISTS: Toleration.Operator
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    operator: Toleration.Operator
    value: str
    effect: Taint.Effect
    def __init__(self, key: _Optional[str] = ..., operator: _Optional[_Union[Toleration.Operator, str]] = ..., value: _Optional[str] = ..., effect: _Optional[_Union[Taint.Effect, str]] = ...) -> None: ...

class Taint(_message.Message):
    __slots__ = ("key", "value", "effect")
    class Effect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EFFECT_UNSPECIFIED: _ClassVar[Taint.Effect]
        NO_SCHEDULE: _ClassVar[Taint.Effect]
        PREFER_NO_SCHEDULE: _ClassVar[Taint.Effect]
    EFFECT_UNSPECIFIED: Taint.Effect
    NO_SCHEDULE: Taint.Effect
    PREFER_NO_SCHEDULE: Taint.Effect
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    effect: Taint.Effect
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., effect: _Optional[_Union[Taint.Effect, str]] = ...) -> None: ...

class EnvVar(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class VolumeMount(_message.Message):
    __slots__ = ("name", "mount_path", "sub_path", "read_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MOUNT_PATH_FIELD_NUMBER: _ClassVar[int]
    SUB_PATH_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    mount_path: str
    sub_path: str
    read_only: bool
    def __init__(self, name: _Optional[str] = ..., mount_path: _Optional[str] = ..., sub_path: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...

class GPURequest(_message.Message):
    __slots__ = ("driver", "min_vram_mb")
    class Driver(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DRIVER_UNSPECIFIED: _ClassVar[GPURequest.Driver]
        ANY: _ClassVar[GPURequest.Driver]
        NVIDIA: _ClassVar[GPURequest.Driver]
        AMD: _ClassVar[GPURequest.Driver]
    DRIVER_UNSPECIFIED: GPURequest.Driver
    ANY: GPURequest.Driver
    NVIDIA: GPURequest.Driver
    AMD: GPURequest.Driver
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    MIN_VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    driver: GPURequest.Driver
    min_vram_mb: int
    def __init__(self, driver: _Optional[_Union[GPURequest.Driver, str]] = ..., min_vram_mb: _Optional[int] = ...) -> None: ...

class ResourceList(_message.Message):
    __slots__ = ("cpu", "memory")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    memory: str
    def __init__(self, cpu: _Optional[str] = ..., memory: _Optional[str] = ...) -> None: ...

class ResourceRequirements(_message.Message):
    __slots__ = ("requests", "limits", "gpu")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    requests: ResourceList
    limits: ResourceList
    gpu: GPURequest
    def __init__(self, requests: _Optional[_Union[ResourceList, _Mapping]] = ..., limits: _Optional[_Union[ResourceList, _Mapping]] = ..., gpu: _Optional[_Union[GPURequest, _Mapping]] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("name", "command", "args", "env", "volume_mounts", "resources")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUME_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedCompositeFieldContainer[EnvVar]
    volume_mounts: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    resources: ResourceRequirements
    def __init__(self, name: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[_Union[EnvVar, _Mapping]]] = ..., volume_mounts: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ..., resources: _Optional[_Union[ResourceRequirements, _Mapping]] = ...) -> None: ...

class SimpleClusterStorage(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostMount(_message.Message):
    __slots__ = ("host_path", "ensure_type")
    class EnsureType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENSURE_TYPE_UNSPECIFIED: _ClassVar[HostMount.EnsureType]
        DIRECTORY_OR_CREATE: _ClassVar[HostMount.EnsureType]
        DIRECTORY: _ClassVar[HostMount.EnsureType]
        FILE_OR_CREATE: _ClassVar[HostMount.EnsureType]
        FILE: _ClassVar[HostMount.EnsureType]
        SOCKET: _ClassVar[HostMount.EnsureType]
    ENSURE_TYPE_UNSPECIFIED: HostMount.EnsureType
    DIRECTORY_OR_CREATE: HostMount.EnsureType
    DIRECTORY: HostMount.EnsureType
    FILE_OR_CREATE: HostMount.EnsureType
    FILE: HostMount.EnsureType
    SOCKET: HostMount.EnsureType
    HOST_PATH_FIELD_NUMBER: _ClassVar[int]
    ENSURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    host_path: str
    ensure_type: HostMount.EnsureType
    def __init__(self, host_path: _Optional[str] = ..., ensure_type: _Optional[_Union[HostMount.EnsureType, str]] = ...) -> None: ...

class Volume(_message.Message):
    __slots__ = ("name", "simple_cluster_storage", "host_mount")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIMPLE_CLUSTER_STORAGE_FIELD_NUMBER: _ClassVar[int]
    HOST_MOUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    simple_cluster_storage: SimpleClusterStorage
    host_mount: HostMount
    def __init__(self, name: _Optional[str] = ..., simple_cluster_storage: _Optional[_Union[SimpleClusterStorage, _Mapping]] = ..., host_mount: _Optional[_Union[HostMount, _Mapping]] = ...) -> None: ...

class WorkloadSpec(_message.Message):
    __slots__ = ("type", "source", "replicas", "update_strategy", "restart_policy", "node_selector", "tolerations", "container", "volumes", "restarted_at")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[WorkloadSpec.Type]
        SERVICE: _ClassVar[WorkloadSpec.Type]
        JOB: _ClassVar[WorkloadSpec.Type]
        DAEMON_SERVICE: _ClassVar[WorkloadSpec.Type]
    TYPE_UNSPECIFIED: WorkloadSpec.Type
    SERVICE: WorkloadSpec.Type
    JOB: WorkloadSpec.Type
    DAEMON_SERVICE: WorkloadSpec.Type
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TOLERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    RESTARTED_AT_FIELD_NUMBER: _ClassVar[int]
    type: WorkloadSpec.Type
    source: WorkloadSource
    replicas: int
    update_strategy: UpdateStrategy
    restart_policy: RestartPolicy
    node_selector: _containers.ScalarMap[str, str]
    tolerations: _containers.RepeatedCompositeFieldContainer[Toleration]
    container: Container
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    restarted_at: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[_Union[WorkloadSpec.Type, str]] = ..., source: _Optional[_Union[WorkloadSource, _Mapping]] = ..., replicas: _Optional[int] = ..., update_strategy: _Optional[_Union[UpdateStrategy, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., tolerations: _Optional[_Iterable[_Union[Toleration, _Mapping]]] = ..., container: _Optional[_Union[Container, _Mapping]] = ..., volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., restarted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "reason", "message", "last_transition_time")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_TRANSITION_TIME_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., last_transition_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WorkloadStatus(_message.Message):
    __slots__ = ("observed_generation", "desired_instances", "ready_instances", "available_instances", "updated_instances", "conditions", "instances", "current_revision", "template_generation")
    OBSERVED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    READY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    observed_generation: int
    desired_instances: int
    ready_instances: int
    available_instances: int
    updated_instances: int
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    current_revision: int
    template_generation: int
    def __init__(self, observed_generation: _Optional[int] = ..., desired_instances: _Optional[int] = ..., ready_instances: _Optional[int] = ..., available_instances: _Optional[int] = ..., updated_instances: _Optional[int] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., current_revision: _Optional[int] = ..., template_generation: _Optional[int] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec", "status")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: WorkloadSpec
    status: WorkloadStatus
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[WorkloadSpec, _Mapping]] = ..., status: _Optional[_Union[WorkloadStatus, _Mapping]] = ...) -> None: ...

class WorkloadRevision(_message.Message):
    __slots__ = ("revision", "bundle", "created", "created_by", "change_cause")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_CAUSE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    bundle: Bundle
    created: _timestamp_pb2.Timestamp
    created_by: str
    change_cause: str
    def __init__(self, revision: _Optional[int] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., change_cause: _Optional[str] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("workload", "virtual_load_balancer", "job_definition", "build_definition")
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_LOAD_BALANCER_FIELD_NUMBER: _ClassVar[int]
    JOB_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    BUILD_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    workload: Workload
    virtual_load_balancer: VirtualLoadBalancer
    job_definition: JobDefinition
    build_definition: BuildDefinition
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ..., virtual_load_balancer: _Optional[_Union[VirtualLoadBalancer, _Mapping]] = ..., job_definition: _Optional[_Union[JobDefinition, _Mapping]] = ..., build_definition: _Optional[_Union[BuildDefinition, _Mapping]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("id", "workload", "namespace", "node", "generation", "phase", "ready", "restart_count", "container_id", "ip", "exit_code", "message", "started_at", "finished_at", "job_run", "resource_version", "purge_volumes", "policy_restart_count")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[Instance.Phase]
        PENDING: _ClassVar[Instance.Phase]
        SCHEDULED: _ClassVar[Instance.Phase]
        BUILDING: _ClassVar[Instance.Phase]
        PULLING: _ClassVar[Instance.Phase]
        STARTING: _ClassVar[Instance.Phase]
        RUNNING: _ClassVar[Instance.Phase]
        SUCCEEDED: _ClassVar[Instance.Phase]
        FAILED: _ClassVar[Instance.Phase]
        TERMINATING: _ClassVar[Instance.Phase]
    PHASE_UNSPECIFIED: Instance.Phase
    PENDING: Instance.Phase
    SCHEDULED: Instance.Phase
    BUILDING: Instance.Phase
    PULLING: Instance.Phase
    STARTING: Instance.Phase
    RUNNING: Instance.Phase
    SUCCEEDED: Instance.Phase
    FAILED: Instance.Phase
    TERMINATING: Instance.Phase
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_RUN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PURGE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    POLICY_RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    workload: str
    namespace: str
    node: str
    generation: int
    phase: Instance.Phase
    ready: bool
    restart_count: int
    container_id: str
    ip: str
    exit_code: int
    message: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    job_run: str
    resource_version: int
    purge_volumes: bool
    policy_restart_count: int
    def __init__(self, id: _Optional[str] = ..., workload: _Optional[str] = ..., namespace: _Optional[str] = ..., node: _Optional[str] = ..., generation: _Optional[int] = ..., phase: _Optional[_Union[Instance.Phase, str]] = ..., ready: _Optional[bool] = ..., restart_count: _Optional[int] = ..., container_id: _Optional[str] = ..., ip: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_run: _Optional[str] = ..., resource_version: _Optional[int] = ..., purge_volumes: _Optional[bool] = ..., policy_restart_count: _Optional[int] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "container_port", "protocol")
    class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PROTOCOL_UNSPECIFIED: _ClassVar[ServicePort.Protocol]
        TCP: _ClassVar[ServicePort.Protocol]
        UDP: _ClassVar[ServicePort.Protocol]
    PROTOCOL_UNSPECIFIED: ServicePort.Protocol
    TCP: ServicePort.Protocol
    UDP: ServicePort.Protocol
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    container_port: int
    protocol: ServicePort.Protocol
    def __init__(self, name: _Optional[str] = ..., container_port: _Optional[int] = ..., protocol: _Optional[_Union[ServicePort.Protocol, str]] = ...) -> None: ...

class ExecAction(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, command: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("exec", "initial_delay_seconds", "period_seconds", "timeout_seconds", "success_threshold", "failure_threshold")
    EXEC_FIELD_NUMBER: _ClassVar[int]
    INITIAL_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    exec: ExecAction
    initial_delay_seconds: int
    period_seconds: int
    timeout_seconds: int
    success_threshold: int
    failure_threshold: int
    def __init__(self, exec: _Optional[_Union[ExecAction, _Mapping]] = ..., initial_delay_seconds: _Optional[int] = ..., period_seconds: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., success_threshold: _Optional[int] = ..., failure_threshold: _Optional[int] = ...) -> None: ...

class IngressRule(_message.Message):
    __slots__ = ("host", "path", "service_port_name", "service_port", "tls")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SERVICE_PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_PORT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    host: str
    path: str
    service_port_name: str
    service_port: int
    tls: bool
    def __init__(self, host: _Optional[str] = ..., path: _Optional[str] = ..., service_port_name: _Optional[str] = ..., service_port: _Optional[int] = ..., tls: _Optional[bool] = ...) -> None: ...

class VirtualLoadBalancerSpec(_message.Message):
    __slots__ = ("ports", "health_check", "ingress")
    PORTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    health_check: HealthCheck
    ingress: _containers.RepeatedCompositeFieldContainer[IngressRule]
    def __init__(self, ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., ingress: _Optional[_Iterable[_Union[IngressRule, _Mapping]]] = ...) -> None: ...

class VirtualLoadBalancer(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: VirtualLoadBalancerSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[VirtualLoadBalancerSpec, _Mapping]] = ...) -> None: ...

class JobDefinitionSpec(_message.Message):
    __slots__ = ("schedule", "completions", "parallelism", "active_deadline_seconds", "backoff_limit")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_LIMIT_FIELD_NUMBER: _ClassVar[int]
    schedule: str
    completions: int
    parallelism: int
    active_deadline_seconds: int
    backoff_limit: int
    def __init__(self, schedule: _Optional[str] = ..., completions: _Optional[int] = ..., parallelism: _Optional[int] = ..., active_deadline_seconds: _Optional[int] = ..., backoff_limit: _Optional[int] = ...) -> None: ...

class JobDefinition(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: JobDefinitionSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[JobDefinitionSpec, _Mapping]] = ...) -> None: ...

class BuildCache(_message.Message):
    __slots__ = ("registry_path",)
    REGISTRY_PATH_FIELD_NUMBER: _ClassVar[int]
    registry_path: str
    def __init__(self, registry_path: _Optional[str] = ...) -> None: ...

class BuildDefinitionSpec(_message.Message):
    __slots__ = ("build_context", "dockerfile_path", "build_args", "target_stage", "platform", "cache")
    class BuildArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUILD_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DOCKERFILE_PATH_FIELD_NUMBER: _ClassVar[int]
    BUILD_ARGS_FIELD_NUMBER: _ClassVar[int]
    TARGET_STAGE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    build_context: str
    dockerfile_path: str
    build_args: _containers.ScalarMap[str, str]
    target_stage: str
    platform: str
    cache: BuildCache
    def __init__(self, build_context: _Optional[str] = ..., dockerfile_path: _Optional[str] = ..., build_args: _Optional[_Mapping[str, str]] = ..., target_stage: _Optional[str] = ..., platform: _Optional[str] = ..., cache: _Optional[_Union[BuildCache, _Mapping]] = ...) -> None: ...

class BuildDefinition(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: BuildDefinitionSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[BuildDefinitionSpec, _Mapping]] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("api_version", "kind", "metadata")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ...) -> None: ...

class GPUDevice(_message.Message):
    __slots__ = ("driver", "vram_mb", "model")
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    driver: GPURequest.Driver
    vram_mb: int
    model: str
    def __init__(self, driver: _Optional[_Union[GPURequest.Driver, str]] = ..., vram_mb: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class NodeResources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "gpus")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GPUDevice]
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GPUDevice, _Mapping]]] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("labels", "taints", "unschedulable")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    unschedulable: bool
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., unschedulable: _Optional[bool] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("condition", "advertise_address", "capacity", "allocatable", "subnet", "wireguard_public_key", "last_heartbeat", "instances", "etcd_member", "leader", "agent_port", "agent_version", "certificate_sha256", "previous_certificate_sha256", "observed_address", "overlay", "conditions")
    class Condition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONDITION_UNSPECIFIED: _ClassVar[NodeStatus.Condition]
        READY: _ClassVar[NodeStatus.Condition]
        NOT_READY: _ClassVar[NodeStatus.Condition]
        UNKNOWN: _ClassVar[NodeStatus.Condition]
    CONDITION_UNSPECIFIED: NodeStatus.Condition
    READY: NodeStatus.Condition
    NOT_READY: NodeStatus.Condition
    UNKNOWN: NodeStatus.Condition
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    ETCD_MEMBER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    AGENT_PORT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    condition: NodeStatus.Condition
    advertise_address: str
    capacity: NodeResources
    allocatable: NodeResources
    subnet: str
    wireguard_public_key: str
    last_heartbeat: _timestamp_pb2.Timestamp
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    etcd_member: bool
    leader: bool
    agent_port: int
    agent_version: str
    certificate_sha256: str
    previous_certificate_sha256: str
    observed_address: str
    overlay: OverlayStatus
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, condition: _Optional[_Union[NodeStatus.Condition, str]] = ..., advertise_address: _Optional[str] = ..., capacity: _Optional[_Union[NodeResources, _Mapping]] = ..., allocatable: _Optional[_Union[NodeResources, _Mapping]] = ..., subnet: _Optional[str] = ..., wireguard_public_key: _Optional[str] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., etcd_member: _Optional[bool] = ..., leader: _Optional[bool] = ..., agent_port: _Optional[int] = ..., agent_version: _Optional[str] = ..., certificate_sha256: _Optional[str] = ..., previous_certificate_sha256: _Optional[str] = ..., observed_address: _Optional[str] = ..., overlay: _Optional[_Union[OverlayStatus, _Mapping]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class OverlayStatus(_message.Message):
    __slots__ = ("interface", "backend", "up", "mtu", "listen_port", "address", "peers", "error", "stale_peers")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    LISTEN_PORT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STALE_PEERS_FIELD_NUMBER: _ClassVar[int]
    interface: str
    backend: str
    up: bool
    mtu: int
    listen_port: int
    address: str
    peers: _containers.RepeatedCompositeFieldContainer[OverlayPeerStatus]
    error: str
    stale_peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, interface: _Optional[str] = ..., backend: _Optional[str] = ..., up: _Optional[bool] = ..., mtu: _Optional[int] = ..., listen_port: _Optional[int] = ..., address: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[OverlayPeerStatus, _Mapping]]] = ..., error: _Optional[str] = ..., stale_peers: _Optional[_Iterable[str]] = ...) -> None: ...

class OverlayPeerStatus(_message.Message):
    __slots__ = ("node_name", "endpoint", "allowed_ips", "latest_handshake", "rx_bytes", "tx_bytes")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_IPS_FIELD_NUMBER: _ClassVar[int]
    LATEST_HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    endpoint: str
    allowed_ips: str
    latest_handshake: _timestamp_pb2.Timestamp
    rx_bytes: int
    tx_bytes: int
    def __init__(self, node_name: _Optional[str] = ..., endpoint: _Optional[str] = ..., allowed_ips: _Optional[str] = ..., latest_handshake: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rx_bytes: _Optional[int] = ..., tx_bytes: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec", "status")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: NodeSpec
    status: NodeStatus
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ...) -> None: ...

class ClusterConfigurationSpec(_message.Message):
    __slots__ = ("cluster_cidr", "service_cidr", "node_subnet_bits", "cluster_domain", "agent_port", "api_port", "etcd_peer_port", "etcd_client_port", "volume_base_path", "backup_path", "backup_interval_minutes", "agent_tick_seconds", "node_loss_timeout_seconds", "backup_retention", "wireguard_port", "join_port", "host_mount_allowed_paths", "ingress_http_port", "ingress_https_port", "metrics_port", "audit_retention_days", "container_log_max_size", "certificate_lifetime_hours", "certificate_lifetime_seconds")
    CLUSTER_CIDR_FIELD_NUMBER: _ClassVar[int]
    SERVICE_CIDR_FIELD_NUMBER: _ClassVar[int]
    NODE_SUBNET_BITS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    AGENT_PORT_FIELD_NUMBER: _ClassVar[int]
    API_PORT_FIELD_NUMBER: _ClassVar[int]
    ETCD_PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLIENT_PORT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_BASE_PATH_FIELD_NUMBER: _ClassVar[int]
    BACKUP_PATH_FIELD_NUMBER: _ClassVar[int]
    BACKUP_INTERVAL_MINUTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_TICK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODE_LOSS_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKUP_RETENTION_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PORT_FIELD_NUMBER: _ClassVar[int]
    JOIN_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_MOUNT_ALLOWED_PATHS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    INGRESS_HTTPS_PORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_LOG_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_LIFETIME_HOURS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    cluster_cidr: str
    service_cidr: str
    node_subnet_bits: int
    cluster_domain: str
    agent_port: int
    api_port: int
    etcd_peer_port: int
    etcd_client_port: int
    volume_base_path: str
    backup_path: str
    backup_interval_minutes: int
    agent_tick_seconds: int
    node_loss_timeout_seconds: int
    backup_retention: int
    wireguard_port: int
    join_port: int
    host_mount_allowed_paths: _containers.RepeatedScalarFieldContainer[str]
    ingress_http_port: int
    ingress_https_port: int
    metrics_port: int
    audit_retention_days: int
    container_log_max_size: str
    certificate_lifetime_hours: int
    certificate_lifetime_seconds: int
    def __init__(self, cluster_cidr: _Optional[str] = ..., service_cidr: _Optional[str] = ..., node_subnet_bits: _Optional[int] = ..., cluster_domain: _Optional[str] = ..., agent_port: _Optional[int] = ..., api_port: _Optional[int] = ..., etcd_peer_port: _Optional[int] = ..., etcd_client_port: _Optional[int] = ..., volume_base_path: _Optional[str] = ..., backup_path: _Optional[str] = ..., backup_interval_minutes: _Optional[int] = ..., agent_tick_seconds: _Optional[int] = ..., node_loss_timeout_seconds: _Optional[int] = ..., backup_retention: _Optional[int] = ..., wireguard_port: _Optional[int] = ..., join_port: _Optional[int] = ..., host_mount_allowed_paths: _Optional[_Iterable[str]] = ..., ingress_http_port: _Optional[int] = ..., ingress_https_port: _Optional[int] = ..., metrics_port: _Optional[int] = ..., audit_retention_days: _Optional[int] = ..., container_log_max_size: _Optional[str] = ..., certificate_lifetime_hours: _Optional[int] = ..., certificate_lifetime_seconds: _Optional[int] = ...) -> None: ...

class ClusterConfiguration(_message.Message):
    __slots__ = ("api_version", "kind", "metadata", "spec")
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: ClusterConfigurationSpec
    def __init__(self, api_version: _Optional[str] = ..., kind: _Optional[str] = ..., metadata: _Optional[_Union[ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[ClusterConfigurationSpec, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "type", "reason", "message", "object_kind", "object_name", "namespace", "timestamp", "source")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Event.Type]
        NORMAL: _ClassVar[Event.Type]
        WARNING: _ClassVar[Event.Type]
    TYPE_UNSPECIFIED: Event.Type
    NORMAL: Event.Type
    WARNING: Event.Type
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: Event.Type
    reason: str
    message: str
    object_kind: str
    object_name: str
    namespace: str
    timestamp: _timestamp_pb2.Timestamp
    source: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[Event.Type, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., object_kind: _Optional[str] = ..., object_name: _Optional[str] = ..., namespace: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class JoinToken(_message.Message):
    __slots__ = ("id", "secret_sha256", "created", "expires", "max_uses", "uses", "revoked", "description", "etcd_member", "approved_addresses")
    ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ETCD_MEMBER_FIELD_NUMBER: _ClassVar[int]
    APPROVED_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    id: str
    secret_sha256: str
    created: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    max_uses: int
    uses: int
    revoked: bool
    description: str
    etcd_member: bool
    approved_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., secret_sha256: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., revoked: _Optional[bool] = ..., description: _Optional[str] = ..., etcd_member: _Optional[bool] = ..., approved_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("instance", "bundle")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    bundle: Bundle
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., bundle: _Optional[_Union[Bundle, _Mapping]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("bundle", "dry_run", "expected_resource_version")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    dry_run: bool
    expected_resource_version: int
    def __init__(self, bundle: _Optional[bytes] = ..., dry_run: _Optional[bool] = ..., expected_resource_version: _Optional[int] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("workload", "changed", "created", "changes", "namespace")
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    workload: Workload
    changed: bool
    created: bool
    changes: _containers.RepeatedScalarFieldContainer[str]
    namespace: Namespace
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ..., changed: _Optional[bool] = ..., created: _Optional[bool] = ..., changes: _Optional[_Iterable[str]] = ..., namespace: _Optional[_Union[Namespace, _Mapping]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("namespace", "label_selector")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    label_selector: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., label_selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("namespace", "since_revision")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    since_revision: int
    def __init__(self, namespace: _Optional[str] = ..., since_revision: _Optional[int] = ...) -> None: ...

class WorkloadList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Workload]
    def __init__(self, items: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ...) -> None: ...

class InstanceList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, items: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, items: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class NamespaceList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Namespace]
    def __init__(self, items: _Optional[_Iterable[_Union[Namespace, _Mapping]]] = ...) -> None: ...

class EventList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, items: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class TokenList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JoinToken]
    def __init__(self, items: _Optional[_Iterable[_Union[JoinToken, _Mapping]]] = ...) -> None: ...

class RevisionList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WorkloadRevision]
    def __init__(self, items: _Optional[_Iterable[_Union[WorkloadRevision, _Mapping]]] = ...) -> None: ...

class WorkloadWatchEvent(_message.Message):
    __slots__ = ("type", "workload", "revision")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[WorkloadWatchEvent.Type]
        PUT: _ClassVar[WorkloadWatchEvent.Type]
        DELETE: _ClassVar[WorkloadWatchEvent.Type]
    TYPE_UNSPECIFIED: WorkloadWatchEvent.Type
    PUT: WorkloadWatchEvent.Type
    DELETE: WorkloadWatchEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: WorkloadWatchEvent.Type
    workload: Workload
    revision: int
    def __init__(self, type: _Optional[_Union[WorkloadWatchEvent.Type, str]] = ..., workload: _Optional[_Union[Workload, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteWorkloadRequest(_message.Message):
    __slots__ = ("namespace", "name", "purge_volumes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURGE_VOLUMES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    purge_volumes: bool
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., purge_volumes: _Optional[bool] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("namespace", "name", "to_revision")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    to_revision: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., to_revision: _Optional[int] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("namespace", "workload", "node")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    workload: str
    node: str
    def __init__(self, namespace: _Optional[str] = ..., workload: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("namespace", "object_name", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    object_name: str
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., object_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("namespace", "workload", "instance_id", "follow", "tail", "since_seconds", "timestamps", "previous")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    workload: str
    instance_id: str
    follow: bool
    tail: int
    since_seconds: int
    timestamps: bool
    previous: bool
    def __init__(self, namespace: _Optional[str] = ..., workload: _Optional[str] = ..., instance_id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since_seconds: _Optional[int] = ..., timestamps: _Optional[bool] = ..., previous: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("instance_id", "data", "stderr")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    data: bytes
    stderr: bool
    def __init__(self, instance_id: _Optional[str] = ..., data: _Optional[bytes] = ..., stderr: _Optional[bool] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("namespace", "workload", "instance_id", "command", "stdin", "tty", "rows", "cols")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    workload: str
    instance_id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    stdin: bytes
    tty: bool
    rows: int
    cols: int
    def __init__(self, namespace: _Optional[str] = ..., workload: _Optional[str] = ..., instance_id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., stdin: _Optional[bytes] = ..., tty: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exited", "exit_code")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exited: bool
    exit_code: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exited: _Optional[bool] = ..., exit_code: _Optional[int] = ...) -> None: ...

class NodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LabelNodeRequest(_message.Message):
    __slots__ = ("name", "set", "remove")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("name", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_seconds: int
    def __init__(self, name: _Optional[str] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "max_uses", "description", "etcd_member", "approved_addresses")
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ETCD_MEMBER_FIELD_NUMBER: _ClassVar[int]
    APPROVED_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    max_uses: int
    description: str
    etcd_member: bool
    approved_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ttl_seconds: _Optional[int] = ..., max_uses: _Optional[int] = ..., description: _Optional[str] = ..., etcd_member: _Optional[bool] = ..., approved_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "join_token")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: JoinToken
    join_token: str
    def __init__(self, token: _Optional[_Union[JoinToken, _Mapping]] = ..., join_token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class NamespaceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_uid", "leader_node", "leader_api_address", "api_endpoints", "configuration", "etcd_members", "version")
    CLUSTER_UID_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_FIELD_NUMBER: _ClassVar[int]
    LEADER_API_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    API_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    ETCD_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster_uid: str
    leader_node: str
    leader_api_address: str
    api_endpoints: _containers.RepeatedScalarFieldContainer[str]
    configuration: ClusterConfiguration
    etcd_members: _containers.RepeatedScalarFieldContainer[str]
    version: str
    def __init__(self, cluster_uid: _Optional[str] = ..., leader_node: _Optional[str] = ..., leader_api_address: _Optional[str] = ..., api_endpoints: _Optional[_Iterable[str]] = ..., configuration: _Optional[_Union[ClusterConfiguration, _Mapping]] = ..., etcd_members: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "actor", "role", "verb", "method", "object", "outcome", "message", "id")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERB_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    actor: str
    role: str
    verb: str
    method: str
    object: str
    outcome: str
    message: str
    id: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., verb: _Optional[str] = ..., method: _Optional[str] = ..., object: _Optional[str] = ..., outcome: _Optional[str] = ..., message: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, items: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class CAMaterial(_message.Message):
    __slots__ = ("ca_cert_pem", "ca_key_pem", "etcd_ca_cert_pem", "etcd_ca_key_pem", "sealed_ca_key", "sealed_etcd_ca_key", "secret_id")
    CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_CA_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    SEALED_CA_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_ETCD_CA_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    ca_cert_pem: bytes
    ca_key_pem: bytes
    etcd_ca_cert_pem: bytes
    etcd_ca_key_pem: bytes
    sealed_ca_key: bytes
    sealed_etcd_ca_key: bytes
    secret_id: str
    def __init__(self, ca_cert_pem: _Optional[bytes] = ..., ca_key_pem: _Optional[bytes] = ..., etcd_ca_cert_pem: _Optional[bytes] = ..., etcd_ca_key_pem: _Optional[bytes] = ..., sealed_ca_key: _Optional[bytes] = ..., sealed_etcd_ca_key: _Optional[bytes] = ..., secret_id: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("path", "size_bytes", "taken_at")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    taken_at: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., taken_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdminRecord(_message.Message):
    __slots__ = ("name", "certificate_sha256", "created", "created_by", "not_after", "revoked", "revoked_at", "revoked_by", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    certificate_sha256: _containers.RepeatedScalarFieldContainer[str]
    created: _timestamp_pb2.Timestamp
    created_by: str
    not_after: _timestamp_pb2.Timestamp
    revoked: bool
    revoked_at: _timestamp_pb2.Timestamp
    revoked_by: str
    role: str
    def __init__(self, name: _Optional[str] = ..., certificate_sha256: _Optional[_Iterable[str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CreateAdminRequest(_message.Message):
    __slots__ = ("name", "csr_pem", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    csr_pem: bytes
    role: str
    def __init__(self, name: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., role: _Optional[str] = ...) -> None: ...

class CreateAdminResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "api_endpoints", "admin")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    API_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    api_endpoints: _containers.RepeatedScalarFieldContainer[str]
    admin: AdminRecord
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., api_endpoints: _Optional[_Iterable[str]] = ..., admin: _Optional[_Union[AdminRecord, _Mapping]] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AdminList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AdminRecord]
    def __init__(self, items: _Optional[_Iterable[_Union[AdminRecord, _Mapping]]] = ...) -> None: ...

class CertificateRevocation(_message.Message):
    __slots__ = ("certificate_sha256", "common_name", "role", "revoked_at", "revoked_by")
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    certificate_sha256: str
    common_name: str
    role: str
    revoked_at: _timestamp_pb2.Timestamp
    revoked_by: str
    def __init__(self, certificate_sha256: _Optional[str] = ..., common_name: _Optional[str] = ..., role: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class IngressCertificate(_message.Message):
    __slots__ = ("host", "cert_pem", "sha256", "not_after", "dns_names", "issuer", "source", "created")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    host: str
    cert_pem: bytes
    sha256: str
    not_after: _timestamp_pb2.Timestamp
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    issuer: str
    source: str
    created: _timestamp_pb2.Timestamp
    def __init__(self, host: _Optional[str] = ..., cert_pem: _Optional[bytes] = ..., sha256: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dns_names: _Optional[_Iterable[str]] = ..., issuer: _Optional[str] = ..., source: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IngressKeyPair(_message.Message):
    __slots__ = ("certificate", "key_pem")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate: IngressCertificate
    key_pem: bytes
    def __init__(self, certificate: _Optional[_Union[IngressCertificate, _Mapping]] = ..., key_pem: _Optional[bytes] = ...) -> None: ...

class IngressKeyPairList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[IngressKeyPair]
    def __init__(self, items: _Optional[_Iterable[_Union[IngressKeyPair, _Mapping]]] = ...) -> None: ...

class IngressCertificateRequest(_message.Message):
    __slots__ = ("host", "cert_pem", "key_pem")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    host: str
    cert_pem: bytes
    key_pem: bytes
    def __init__(self, host: _Optional[str] = ..., cert_pem: _Optional[bytes] = ..., key_pem: _Optional[bytes] = ...) -> None: ...

class IngressCertificateList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[IngressCertificate]
    def __init__(self, items: _Optional[_Iterable[_Union[IngressCertificate, _Mapping]]] = ...) -> None: ...

class IngressCertificatesRequest(_message.Message):
    __slots__ = ("node_name", "hosts")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_name: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("token", "csr_pem", "advertise_address", "hostname", "labels", "etcd_member", "capacity", "wireguard_public_key", "node_name", "etcd_server_csr_pem", "etcd_client_csr_pem")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ETCD_MEMBER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ETCD_SERVER_CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLIENT_CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: bytes
    advertise_address: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    etcd_member: bool
    capacity: NodeResources
    wireguard_public_key: str
    node_name: str
    etcd_server_csr_pem: bytes
    etcd_client_csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., advertise_address: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., etcd_member: _Optional[bool] = ..., capacity: _Optional[_Union[NodeResources, _Mapping]] = ..., wireguard_public_key: _Optional[str] = ..., node_name: _Optional[str] = ..., etcd_server_csr_pem: _Optional[bytes] = ..., etcd_client_csr_pem: _Optional[bytes] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_name", "advertise_address", "subnet", "wireguard_public_key", "wireguard_port", "observed_address")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PORT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    advertise_address: str
    subnet: str
    wireguard_public_key: str
    wireguard_port: int
    observed_address: str
    def __init__(self, node_name: _Optional[str] = ..., advertise_address: _Optional[str] = ..., subnet: _Optional[str] = ..., wireguard_public_key: _Optional[str] = ..., wireguard_port: _Optional[int] = ..., observed_address: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node", "certificate_pem", "ca_pem", "configuration", "peers", "api_endpoints", "etcd_endpoints", "cluster_uid", "etcd_ca_pem", "etcd_server_certificate_pem", "etcd_client_certificate_pem", "etcd_initial_cluster", "cluster_secret")
    class EtcdInitialClusterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    API_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ETCD_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_UID_FIELD_NUMBER: _ClassVar[int]
    ETCD_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_SERVER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLIENT_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    ETCD_INITIAL_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SECRET_FIELD_NUMBER: _ClassVar[int]
    node: Node
    certificate_pem: bytes
    ca_pem: bytes
    configuration: ClusterConfiguration
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    api_endpoints: _containers.RepeatedScalarFieldContainer[str]
    etcd_endpoints: _containers.RepeatedScalarFieldContainer[str]
    cluster_uid: str
    etcd_ca_pem: bytes
    etcd_server_certificate_pem: bytes
    etcd_client_certificate_pem: bytes
    etcd_initial_cluster: _containers.ScalarMap[str, str]
    cluster_secret: bytes
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., configuration: _Optional[_Union[ClusterConfiguration, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., api_endpoints: _Optional[_Iterable[str]] = ..., etcd_endpoints: _Optional[_Iterable[str]] = ..., cluster_uid: _Optional[str] = ..., etcd_ca_pem: _Optional[bytes] = ..., etcd_server_certificate_pem: _Optional[bytes] = ..., etcd_client_certificate_pem: _Optional[bytes] = ..., etcd_initial_cluster: _Optional[_Mapping[str, str]] = ..., cluster_secret: _Optional[bytes] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_name", "capacity", "allocatable", "labels", "taints", "instances", "wireguard_public_key", "advertise_address", "agent_version", "overlay", "ingress")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    capacity: NodeResources
    allocatable: NodeResources
    labels: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    wireguard_public_key: str
    advertise_address: str
    agent_version: str
    overlay: OverlayStatus
    ingress: IngressStatus
    def __init__(self, node_name: _Optional[str] = ..., capacity: _Optional[_Union[NodeResources, _Mapping]] = ..., allocatable: _Optional[_Union[NodeResources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., wireguard_public_key: _Optional[str] = ..., advertise_address: _Optional[str] = ..., agent_version: _Optional[str] = ..., overlay: _Optional[_Union[OverlayStatus, _Mapping]] = ..., ingress: _Optional[_Union[IngressStatus, _Mapping]] = ...) -> None: ...

class IngressStatus(_message.Message):
    __slots__ = ("serving", "problem", "reload_failures")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    RELOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    problem: str
    reload_failures: int
    def __init__(self, serving: _Optional[bool] = ..., problem: _Optional[str] = ..., reload_failures: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("tick_seconds", "leader_node", "api_endpoints", "peers")
    TICK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_FIELD_NUMBER: _ClassVar[int]
    API_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    tick_seconds: int
    leader_node: str
    api_endpoints: _containers.RepeatedScalarFieldContainer[str]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, tick_seconds: _Optional[int] = ..., leader_node: _Optional[str] = ..., api_endpoints: _Optional[_Iterable[str]] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class AssignmentsRequest(_message.Message):
    __slots__ = ("node_name", "accept_deltas")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_DELTAS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    accept_deltas: bool
    def __init__(self, node_name: _Optional[str] = ..., accept_deltas: _Optional[bool] = ...) -> None: ...

class AssignmentSet(_message.Message):
    __slots__ = ("assignments", "revision", "peers", "delta", "base_revision", "removed", "peers_changed")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PEERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    revision: int
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    delta: bool
    base_revision: int
    removed: _containers.RepeatedScalarFieldContainer[str]
    peers_changed: bool
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., revision: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., delta: _Optional[bool] = ..., base_revision: _Optional[int] = ..., removed: _Optional[_Iterable[str]] = ..., peers_changed: _Optional[bool] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("instance_id", "ip", "node")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    ip: str
    node: str
    def __init__(self, instance_id: _Optional[str] = ..., ip: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class ServiceEndpoints(_message.Message):
    __slots__ = ("namespace", "workload", "endpoints", "ports", "ingress", "desired")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    workload: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    ingress: _containers.RepeatedCompositeFieldContainer[IngressRule]
    desired: int
    def __init__(self, namespace: _Optional[str] = ..., workload: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., ingress: _Optional[_Iterable[_Union[IngressRule, _Mapping]]] = ..., desired: _Optional[int] = ...) -> None: ...

class EndpointsRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class EndpointSet(_message.Message):
    __slots__ = ("services", "revision", "ingress_nodes")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    INGRESS_NODES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceEndpoints]
    revision: int
    ingress_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceEndpoints, _Mapping]]] = ..., revision: _Optional[int] = ..., ingress_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class IssuedCertificate(_message.Message):
    __slots__ = ("serial", "common_name", "role", "not_before", "not_after", "dns_names", "ip_addresses", "reason", "sha256")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    serial: str
    common_name: str
    role: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    sha256: str
    def __init__(self, serial: _Optional[str] = ..., common_name: _Optional[str] = ..., role: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dns_names: _Optional[_Iterable[str]] = ..., ip_addresses: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class CertificateList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[IssuedCertificate]
    def __init__(self, items: _Optional[_Iterable[_Union[IssuedCertificate, _Mapping]]] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ...) -> None: ...

class InstanceStats(_message.Message):
    __slots__ = ("instance_id", "namespace", "workload", "node", "cpu_cores", "memory_bytes", "memory_limit_bytes")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    namespace: str
    workload: str
    node: str
    cpu_cores: float
    memory_bytes: int
    memory_limit_bytes: int
    def __init__(self, instance_id: _Optional[str] = ..., namespace: _Optional[str] = ..., workload: _Optional[str] = ..., node: _Optional[str] = ..., cpu_cores: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InstanceStats]
    def __init__(self, items: _Optional[_Iterable[_Union[InstanceStats, _Mapping]]] = ...) -> None: ...

class TopRequest(_message.Message):
    __slots__ = ("namespace", "node")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    node: str
    def __init__(self, namespace: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class TopResponse(_message.Message):
    __slots__ = ("instances", "unreachable")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStats]
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceStats, _Mapping]]] = ..., unreachable: _Optional[_Iterable[str]] = ...) -> None: ...
