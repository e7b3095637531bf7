"""Load generation and serving metrics: an accurate streaming client, load shapes, workloads, metrics, scenarios.

Kept import-light on purpose: `r1lab.bench.locustfile` must import locust (gevent monkey-patching) before any
ssl/urllib3/aiohttp import, so nothing here imports those at package import time.
"""
