"""The functional core: pure functions over plain data.

No I/O here: no aiohttp, no kubernetes_asyncio (an import-linter contract checks it).
"""
