"""The native-mode objects: a MutatingAdmissionPolicy, a ValidatingAdmissionPolicy for warnings,
and their bindings, generated from the active profiles and settings. Pure.

The mutation is one JSON Patch that appends in the webhook's order (the worker variable,
CPU_LIMIT, PYTHON_CPU_COUNT); a container without `env` first gets an empty one in the same
patch (between two mutations an empty list would be dropped). A variable the container
already has is never touched, so a second pass changes nothing (reinvocation). CPU_LIMIT is a
downward-API `resourceFieldRef`, an atomic struct that an apply configuration may not set:
JSON Patch it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from webhook.core import keys
from webhook.core.options import Options
from webhook.core.types import Obj
from webhook.native import cel

NAME = "concurrency-injector"
WARNINGS_NAME = NAME + "-warnings"
LOWEST_MINOR = 34  # MutatingAdmissionPolicy v1beta1 (feature gate MutatingAdmissionPolicy)
GA_MINOR = 36  # admissionregistration.k8s.io/v1
ALWAYS_EXCLUDED = ("kube-system", "kube-node-lease")
APPEND = "JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/env/-', value: {entry}}}"


class PolicyError(ValueError):
    """The policy cannot be generated as asked (the message names why)."""


@dataclass(frozen=True)
class KubeVersion:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> KubeVersion:
        parts = text.strip().lstrip("v").split(".")
        try:
            major, minor = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise PolicyError(f"--kube-version {text!r}: expected MAJOR.MINOR, e.g. 1.37") from None
        if (major, minor) < (1, LOWEST_MINOR):
            raise PolicyError(
                f"--kube-version {text}: MutatingAdmissionPolicy needs Kubernetes 1.{LOWEST_MINOR}"
                " or newer (v1beta1 behind a feature gate; v1 from 1.36)"
            )
        return cls(major, minor)

    @property
    def mutating_api(self) -> str:
        beta = (self.major, self.minor) < (1, GA_MINOR)
        return "admissionregistration.k8s.io/" + ("v1beta1" if beta else "v1")


def match_conditions(max_containers: int, max_env: int, max_annotation_bytes: int) -> list[Obj]:
    """Pods the policy considers at all: the rest is the webhook's (or nobody's)."""
    ann = "object.metadata.?annotations.orValue({})"

    def word(key: str) -> str:
        return f"{ann}[?{cel.lit(key)}].orValue('').trim().lowerAscii()"

    containers = "object.spec.?{0}.orValue([])"
    all_containers = " + ".join(
        containers.format(f) for f in ("containers", "initContainers", "ephemeralContainers")
    )
    return [
        {
            "name": "not-mirror-pod",
            "expression": f"!('kubernetes.io/config.mirror' in {ann})",
        },
        {"name": "not-opted-out", "expression": f"{word(keys.INJECT)} != 'false'"},
        {
            "name": "no-container-list",
            "expression": f"{ann}[?{cel.lit(keys.CONTAINERS)}].orValue('') == ''",
        },
        {"name": "not-audit", "expression": f"{word(keys.MODE)} != 'audit'"},
        {"name": "not-override", "expression": f"{word(keys.OVERRIDE)} != 'true'"},
        {
            "name": "no-pod-settings",
            "expression": " && ".join(
                f"!({cel.lit(k)} in {ann})" for k in cel.POD_RULE_ANNOTATIONS
            ),
        },
        {
            "name": "within-work-caps",
            "expression": (
                f"size({all_containers}) <= {max_containers} && "
                f"({all_containers}).map(c, size(c.?env.orValue([]))).sum() <= {max_env} && "
                f"{ann}.map(k, size(k) + size({ann}[k])).sum() <= {max_annotation_bytes}"
            ),
        },
    ]


# Values are plain CEL maps, not `Object.spec.containers.env{...}` literals: kube-apiserver 1.35
# panics converting an Object literal to a JSON Patch value (fixed by 1.37); maps work on both.
def _entry(name: str, value: str) -> str:
    return f"{{'name': string({name}), 'value': string({value})}}"


CPU_LIMIT_ENTRY = (
    "{'name': dyn('CPU_LIMIT'), 'valueFrom': dyn({'resourceFieldRef': "
    "{'containerName': string(c.name), 'resource': 'limits.cpu', 'divisor': '1'}})}"
)


def _lacks(name: str) -> str:
    return f"!(has(c.env) && c.env.exists(e, e.name == {name}))"


def _per_container(condition: str, op: str) -> str:
    return f"object.spec.containers.transformList(i, c, {condition}, {op})"


def mutations(options: Options) -> list[Obj]:
    """One JSON Patch, in the webhook's order: resizePolicy, worker variable(s), facts, marker.

    One mutation, not one per variable: the policy's variables are evaluated once per
    mutation, and they are most of its cost. A container without `env` first gets an empty
    one (an op of the same patch, so it is not dropped as empty between mutations), then
    every variable is appended.
    """
    slots = max((len(p.env) for p in options.profiles.profiles.values()), default=1)
    set_here = "variables.decided[i] && variables.millis[i] > 0"
    resize_entry = "{'resourceName': 'cpu', 'restartPolicy': 'RestartContainer'}"
    resize = _per_container(
        f"variables.resizeRestart && {set_here} && "
        f"variables.wanted[i].exists(n, {_lacks('n')}) && "
        "!(has(c.resizePolicy) && c.resizePolicy.exists(p, p.resourceName == 'cpu'))",
        "has(c.resizePolicy) && size(c.resizePolicy) > 0 ? "
        "JSONPatch{op: 'add', path: '/spec/containers/' + string(i) + '/resizePolicy/-', "
        f"value: {resize_entry}}} : "
        "JSONPatch{op: 'add', path: '/spec/containers/' + string(i) + '/resizePolicy', "
        f"value: [{resize_entry}]}}",
    )
    parts = [
        resize,
        _per_container(
            f"{set_here} && !(has(c.env) && size(c.env) > 0)",
            "JSONPatch{op: 'add', path: '/spec/containers/' + string(i) + '/env', value: []}",
        ),
    ]
    for slot in range(max(slots, 1)):
        name = f"variables.wanted[i][{slot}]"
        parts.append(
            _per_container(
                f"size(variables.wanted[i]) > {slot} && {_lacks(name)}",
                APPEND.format(entry=_entry(name, "string(variables.workers[i])")),
            )
        )
    parts.append(
        _per_container(
            f"{set_here} && {_lacks(cel.lit(keys.CPU_LIMIT))}", APPEND.format(entry=CPU_LIMIT_ENTRY)
        )
    )
    parts.append(
        _per_container(
            f"variables.pythonCpuCount && {set_here} && {_lacks(cel.lit(keys.PYTHON_CPU_COUNT))}",
            APPEND.format(
                entry=_entry(
                    cel.lit(keys.PYTHON_CPU_COUNT), "string([1, variables.millis[i] / 1000].max())"
                )
            ),
        )
    )
    marker = cel.lit(cel.MARKER)
    parts.append(
        "(size(variables.decidedNames) == 0 ? [] : !has(object.metadata.annotations) ? "
        f"[JSONPatch{{op: 'add', path: '/metadata/annotations', "
        f"value: {{{marker}: variables.decidedNames.join(',')}}}}] : "
        f"object.metadata.annotations[?{marker}].orValue('') == "
        "variables.decidedNames.join(',') ? [] : "
        f"[JSONPatch{{op: 'add', path: '/metadata/annotations/' + jsonpatch.escapeKey({marker}), "
        "value: variables.decidedNames.join(',')}])"
    )
    return [{"patchType": "JSONPatch", "jsonPatch": {"expression": " +\n".join(parts)}}]


def validations(options: Options) -> list[Obj]:
    """Warnings CEL can express, for the containers the policy decided (its marker names)."""
    flags = {
        name: list(p.flags) for name, p in options.profiles.profiles.items() if p.env and p.flags
    }
    table = "{" + ", ".join(f"{cel.lit(k)}: {cel.str_list(v)}" for k, v in flags.items()) + "}"
    flagged = (
        "variables.names.transformList(i, n, n in variables.marked && "
        f"variables.runtime[i] in {table} && variables.detected[i] == variables.runtime[i] && "
        f"variables.command[i].exists(w, {table}[variables.runtime[i]].exists(f, w == f || "
        "w.startsWith(f + '=') || (!f.startsWith('--') && !w.startsWith('--') && "
        "w.startsWith(f) && size(w) > size(f)))), n)"
    )
    no_cpu = (
        "variables.names.transformList(i, n, n in variables.marked && variables.cpu[i] == '', n)"
    )
    return [
        {
            "expression": f"size({no_cpu}) == 0",
            "messageExpression": (
                f"'no CPU limit, so no worker count (concurrency-injector): ' + {no_cpu}.join(', ')"
            ),
        },
        {
            "expression": f"size({flagged}) == 0",
            "messageExpression": (
                "'a worker flag in the command overrides the worker variable "
                f"(concurrency-injector): ' + {flagged}.join(', ')"
            ),
        },
    ]


def _variables(pairs: Iterable[tuple[str, str]]) -> list[Obj]:
    return [{"name": n, "expression": e} for n, e in pairs]


def match_constraints(excluded: Iterable[str]) -> Obj:
    namespaces = list(dict.fromkeys([*ALWAYS_EXCLUDED, *excluded]))
    return {
        "resourceRules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
            }
        ],
        "matchPolicy": "Equivalent",
        "namespaceSelector": {
            "matchExpressions": [
                {"key": keys.ENABLED_LABEL, "operator": "In", "values": ["true"]},
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": namespaces,
                },
            ]
        },
        "objectSelector": {
            "matchExpressions": [
                {"key": keys.ENABLED_LABEL, "operator": "NotIn", "values": ["false"]}
            ]
        },
    }


def objects(
    options: Options,
    *,
    kube: KubeVersion,
    disabled: Iterable[str] = (),
    excluded_namespaces: Iterable[str] = (),
    max_containers: int = 100,
    max_env_entries: int = 5000,
    max_annotation_bytes: int = 256 * 1024,
    name: str = NAME,
) -> list[Obj]:
    """The four objects: the mutating policy and binding, the warning policy and binding."""
    if options.mode == "audit":
        raise PolicyError(
            "audit mode patches nothing: a policy cannot audit; survey with the webhook instead"
        )
    try:
        pairs = cel.variables(options, disabled=disabled)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    constraints = match_constraints(excluded_namespaces)
    conditions = match_conditions(max_containers, max_env_entries, max_annotation_bytes)
    labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "native-policy"}
    warnings = f"{name}-warnings"
    marked = (
        f"object.metadata.?annotations.orValue({{}})[?{cel.lit(cel.MARKER)}].orValue('').split(',')"
    )
    return [
        {
            "apiVersion": kube.mutating_api,
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "IfNeeded",
                "matchConstraints": constraints,
                "matchConditions": conditions,
                "variables": _variables(pairs),
                "mutations": mutations(options),
            },
        },
        {
            "apiVersion": kube.mutating_api,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": labels},
            "spec": {"policyName": name},
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": warnings, "labels": labels},
            "spec": {
                "failurePolicy": "Ignore",
                "matchConstraints": constraints,
                "matchConditions": [
                    {"name": "decided-by-the-policy", "expression": f"{marked} != ['']"}
                ],
                "variables": _variables([*pairs, ("marked", marked)]),
                "validations": validations(options),
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": warnings, "labels": labels},
            "spec": {"policyName": warnings, "validationActions": ["Warn"]},
        },
    ]
