#!/usr/bin/env bash
# The pod network of a kind cluster made without kindnetd (hack/e2e-kind.sh --local): on each
# node, the CNI bridge plugin with host-local addresses from the node's own podCIDR (which
# kube-controller-manager allocates), and a route to every other node's podCIDR through that
# node's address on the kind network; traffic from pods to anything but pods is masqueraded, pod
# to pod keeps its source address (NetworkPolicy sees who calls). What kindnetd does for routing,
# written once at start-up; NetworkPolicy is enforced by hack/kind/network-policy.yaml.
#
#   hack/kind/pod-network.sh CLUSTER      # KUBECONFIG must point at the cluster
set -eu

CLUSTER="${1:?usage: pod-network.sh CLUSTER}"

# podCIDRs are allocated when a node registers: wait for every node's.
nodes="$(kind get nodes --name "$CLUSTER")"
declare -A cidr ip
for node in $nodes; do
    for _ in $(seq 1 120); do
        cidr[$node]="$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)"
        [ -n "${cidr[$node]}" ] && break
        sleep 1
    done
    [ -n "${cidr[$node]}" ] || { echo "pod-network: node $node has no podCIDR" >&2; exit 1; }
    ip[$node]="$(docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "$node")"
done

for node in $nodes; do
    docker exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-bridge.conflist' <<CONF
{
  "cniVersion": "1.0.0",
  "name": "kind-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${cidr[$node]}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CONF
    # Masquerade what leaves for outside the pods (other nodes' addresses, the internet), as
    # kindnetd does; not pod to pod.
    docker exec "$node" sh -c "iptables -t nat -N KIND-POD-MASQ 2>/dev/null || iptables -t nat -F KIND-POD-MASQ
        iptables -t nat -C POSTROUTING -s ${cidr[$node]} -j KIND-POD-MASQ 2>/dev/null \
            || iptables -t nat -A POSTROUTING -s ${cidr[$node]} -j KIND-POD-MASQ"
    for other in $nodes; do
        docker exec "$node" iptables -t nat -A KIND-POD-MASQ -d "${cidr[$other]}" -j RETURN
        [ "$other" = "$node" ] && continue
        docker exec "$node" ip route replace "${cidr[$other]}" via "${ip[$other]}"
    done
    docker exec "$node" iptables -t nat -A KIND-POD-MASQ -j MASQUERADE
    echo "pod-network: $node ${ip[$node]} pods ${cidr[$node]}"
done
