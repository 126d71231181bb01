"""Observability for the specd services: Prometheus metrics and structured logs.

- :mod:`specd_metrics.server`: ``start_metrics_server(registry, host, port)``, the ``/metrics``
  HTTP endpoint of one service (its own ``CollectorRegistry``, never the global one: several
  services may share a process).
- :mod:`specd_metrics.services`: the metric sets of the three services
  (``OrchestratorMetrics``, ``TargetMetrics``, ``DraftMetrics``), fed by the thin gRPC servicers
  and by collectors that read the domain objects' own counters at scrape time.
- :mod:`specd_metrics.logs`: JSON log lines and the session id of the call being served
  (standard library only; domain code may import it).

The metric names are listed in docs/METRICS.md.
"""
