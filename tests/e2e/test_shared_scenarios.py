"""The API server suite's scenarios, the same test functions, on the kind cluster.

They take `cluster`, `release`, `webhook` and `enabled_namespace`, which tests/e2e/conftest.py
gives from the installed release (the webhook in its pods, metrics summed over its replicas).
Left out: those that start webhook processes on the test's host or read the local control
plane's files (TLS convergence and renewal of a second process, failurePolicy with the webhook
stopped, reinvocation and audit through side webhooks, the RBAC checks with a host token).
"""

from __future__ import annotations

from tests.apiserver.test_injection import (
    test_a_limit_range_default_counts_as_the_cpu_limit,
    test_env_from_config_map_is_read_and_a_secret_is_not,
    test_examples_in_a_labelled_namespace_get_what_the_readme_says,
    test_excluded_pods_are_stored_unchanged_and_the_webhook_is_not_called,
    test_match_conditions_keep_pods_from_the_webhook,
    test_pod_level_resources,
    test_server_side_dry_run_is_patched_and_stores_nothing,
    test_warnings_reach_kubectl,
)
from tests.apiserver.test_scale import test_every_pod_of_a_scaled_deployment_is_patched
from tests.apiserver.test_tls_and_rbac import (
    test_reapplying_the_chart_keeps_the_ca_bundle,
    test_the_release_namespace_pods_are_never_patched,
)

__all__ = [
    "test_a_limit_range_default_counts_as_the_cpu_limit",
    "test_env_from_config_map_is_read_and_a_secret_is_not",
    "test_every_pod_of_a_scaled_deployment_is_patched",
    "test_examples_in_a_labelled_namespace_get_what_the_readme_says",
    "test_excluded_pods_are_stored_unchanged_and_the_webhook_is_not_called",
    "test_match_conditions_keep_pods_from_the_webhook",
    "test_pod_level_resources",
    "test_reapplying_the_chart_keeps_the_ca_bundle",
    "test_server_side_dry_run_is_patched_and_stores_nothing",
    "test_the_release_namespace_pods_are_never_patched",
    "test_warnings_reach_kubectl",
]
