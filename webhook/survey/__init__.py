"""Read-only tools around the decision: `explain` (why each container gets what it gets) and
`survey` (which workloads of a cluster, or of manifests, are in the CPU trap today)."""
