"""The one Kubernetes client and LIST+WATCH loop, shared by the webhook server, the controller
and the CLI (shell code: the pure half of the watch is webhook.core.watch_plan)."""
