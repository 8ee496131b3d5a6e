"""The controller's pure core: the reconcile planners (observed objects in, actions out),
the manifests they create, pod records and Events, and the certificate rotation plan."""
