"""What the bureau sees: the Grafana dashboards (JSON beside this file) and the queries in them.

The dashboards' SQL is the single definition of each figure: Grafana runs it, and so do the
monthly report and the tests, through :mod:`dashboards.grafana`.
"""
