#!/usr/bin/env bash
# Debian images built here from Debian's packages (debootstrap reaches the same mirror apt uses),
# for machines whose Docker engine cannot pull from any registry. Each is tagged with a key of
# what went into it, so it is built once per machine and a warm run finds it at once.
#
#   hack/kind/base-images.sh python   # prints the tag of a Python base (python3 + a venv on PATH)
#   hack/kind/base-images.sh net      # prints the tag of a base with iptables and docker-registry
#   hack/kind/base-images.sh node     # prints the tag of kind's base image (systemd, containerd...)
#
# The release image keeps the official python image (the Dockerfile's default): these stand in
# only where it cannot be pulled (hack/e2e-kind.sh decides).
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
SUITE="${DEBIAN_SUITE:-bookworm}"
REPO="concurrency-injector.local"
STATE="${BASE_CACHE:-$HOME/.cache/concurrency-injector/base-images}"

cannot() { echo "base-images: $*" >&2; exit 3; }

# The mirror apt uses on this machine (deb822 or one-line sources), else Debian's own.
mirror() {
    local m
    m="$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
    [ -n "$m" ] || m="$(sed -n 's/^deb \(http[^ ]*debian\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)"
    echo "${m:-http://deb.debian.org/debian}"
}

# Certificate authorities this host trusts beyond Debian's (an egress proxy's, say): a base that
# must reach the package registries from inside a build trusts them too. Detected, not assumed.
extra_cas() { ls /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; }

# shellcheck disable=SC2034  # read by name: ${!packages}
PACKAGES_python="ca-certificates python3 python3-venv"
# shellcheck disable=SC2034
PACKAGES_net="ca-certificates iptables nftables conntrack ipset kmod iproute2 docker-registry"
# kind v0.33.0's images/base/Dockerfile list (fuse-overlayfs, nfs-common and open-iscsi left
# out: rootless, NFS and iSCSI volumes are not used here), plus what debootstrap's minbase lacks.
# shellcheck disable=SC2034
PACKAGES_node="systemd systemd-sysv dbus conntrack iptables nftables iproute2 ethtool util-linux
mount kmod libseccomp2 pigz e2fsprogs bash ca-certificates curl jq procps ebtables socat"

# The rootfs is keyed by what debootstrap is given; the image on top by its build context too.
rootfs_key() {
    local packages="PACKAGES_$1"
    {
        echo "$SUITE $(mirror) ${!packages}"
        for f in $(extra_cas); do sha256sum "$f"; done
    } | sha256sum | cut -c1-12
}

# A rootfs of PACKAGES, imported as an image (no registry involved).
rootfs_image() {
    local name="$1" tag="$2" packages dir started
    packages="PACKAGES_$name"
    command -v debootstrap >/dev/null 2>&1 || {
        [ "$(id -u)" = 0 ] || cannot "debootstrap is not installed and only root may install it"
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }; } \
            || cannot "apt-get install debootstrap failed"
    }
    started="$(date +%s)"
    dir="$STATE/rootfs-$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "base-images: debootstrap $SUITE ($name) from $(mirror)" >&2
    debootstrap --variant=minbase --include="$(echo "${!packages}" | tr -s ' \n' ',,' | sed 's/,$//')" \
        "$SUITE" "$dir" "$(mirror)" >"$STATE/debootstrap-$name.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap-$name.log" >&2; cannot "debootstrap of $name failed"; }
    for ca in $(extra_cas); do cp "$ca" "$dir/usr/local/share/ca-certificates/"; done
    [ -z "$(extra_cas)" ] || chroot "$dir" update-ca-certificates >/dev/null
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* \
        "$dir"/usr/share/man/* "$dir"/var/log/*
    tar -C "$dir" -c . | docker import - "$tag" >/dev/null
    rm -rf "$dir"
    echo "base-images: $tag in $(($(date +%s) - started)) s" >&2
}

build() {
    local name="$1" rootfs context key tag
    rootfs="$REPO/$name-rootfs:$SUITE-$(rootfs_key "$name")"
    mkdir -p "$STATE"
    docker image inspect "$rootfs" >/dev/null 2>&1 || rootfs_image "$name" "$rootfs"
    context="$(mktemp -d)"
    case "$name" in
    python)
        # pip in a venv: what the official image's pip is (not Debian's externally managed one).
        cat >"$context/Dockerfile" <<DOCKERFILE
FROM $rootfs
RUN python3 -m venv /opt/python
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
        ;;
    net)
        cat >"$context/Dockerfile" <<DOCKERFILE
FROM $rootfs
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
        ;;
    node) node_context "$context" "$rootfs" ;;
    esac
    key="$(tar -C "$context" --sort=name --mtime=@0 --owner=0 --group=0 -c . | sha256sum | cut -c1-12)"
    tag="$REPO/$name-base:$SUITE-$key"
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$context" 2>"$STATE/build-$name.log" >/dev/null \
            || { cat "$STATE/build-$name.log" >&2; cannot "docker build of $tag failed"; }
    fi
    rm -rf "$context"
    echo "$tag"
}

# kind's base image (images/base/Dockerfile of the kind module), on the rootfs above, with the
# node programs from hack/kind/tools.sh in the places kind's image has them.
node_context() {
    local context="$1" from="$2" kind_dir tools name version
    kind_dir="$(go mod download -json "sigs.k8s.io/kind@$(awk '$1 == "kind" {print $2}' <("$HERE/tools.sh" versions))" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [ -d "$kind_dir/images/base/files" ] || cannot "the kind module has no images/base/files"
    tools="$("$HERE/tools.sh" | tail -1)"
    cp -r "$kind_dir/images/base/files" "$context/files"
    chmod -R u+w "$context/files"
    mkdir -p "$context/bin" "$context/cni"
    while read -r name version; do
        case "$name" in
        containerd | crictl) cp "$tools/$name-$version"/* "$context/bin/" ;;
        runc) cp "$tools/runc-$version/runc" "$context/runc" ;;
        cni-plugins) cp "$tools/cni-plugins-$version"/* "$context/cni/" ;;
        esac
    done < <("$HERE/tools.sh" versions)
    cat >"$context/Dockerfile" <<DOCKERFILE
FROM $from
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
COPY bin/ /usr/local/bin/
COPY runc /usr/local/sbin/runc
COPY cni/ /opt/cni/bin/
RUN chmod 755 /kind /kind/bin /kind/bin/* /usr/local/bin/* /usr/local/sbin/runc /opt/cni/bin/* \\
    && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \\
    && rm -f /lib/systemd/system/multi-user.target.wants/* \\
    && rm -f /etc/systemd/system/*.wants/* \\
    && rm -f /lib/systemd/system/local-fs.target.wants/* \\
    && rm -f /lib/systemd/system/sockets.target.wants/*udev* \\
    && rm -f /lib/systemd/system/sockets.target.wants/*initctl* \\
    && rm -f /lib/systemd/system/basic.target.wants/* \\
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
    && ln -sf /usr/lib/systemd/systemd /sbin/init \\
    && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
    && systemctl mask systemd-binfmt.service \\
    && mkdir -p /etc/kubernetes/manifests \\
    && ctr oci spec \\
        | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
        | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
    && containerd --version && runc --version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]
DOCKERFILE
}

case "${1:-}" in
python | net | node) build "$1" ;;
*) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
