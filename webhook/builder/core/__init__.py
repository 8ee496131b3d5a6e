"""The builder's pure core: the build plan, registry endpoints, auth and retries, and the
checks on layer tar entries."""
