"""Native mode: the profiles as admission policies evaluated inside kube-apiserver (CEL)."""
