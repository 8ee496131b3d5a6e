"""The functional core that several parts share: image references, quantities, names, the
ImageCache model and index, the cache disk's layout, the builder's result (read by the
controller) and the watch plan of the kube client. Each part's own pure logic is in its
`core` subpackage (webhook/<part>/core/).

No I/O here: no aiohttp, no kubernetes_asyncio (an import-linter contract checks it).
"""
