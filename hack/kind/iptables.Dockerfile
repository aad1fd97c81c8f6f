# Appended by hack/kind/node-image.sh to the Dockerfiles of the images that run iptables on the
# node (kube-proxy, kube-router): iptables commands that pick their backend on first use
# (hack/kind/iptables-wrapper).
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
        ln -sf /usr/sbin/iptables-wrapper "/usr/sbin/$cmd"; \
    done
