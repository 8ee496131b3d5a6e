"""The admission webhook server: the aiohttp TLS shell around webhook.server.core.review."""
