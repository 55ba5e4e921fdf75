"""The server kernel: what every room of the platform stands on, importing only the contract.

Settings (``settings``), the platform object passed down to the rooms (``platform``), the store
with its migrations (``store``), API keys and roles (``auth``), agent request signatures
(``agentauth``), enterprises, sites and enrolment (``sites``), FastAPI dependencies (``deps``) and
domain errors that know nothing of HTTP (``errors``).
"""
