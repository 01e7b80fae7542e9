"""Berth's runtime: what every service on the stack gets, and never edits.

Settings, the database engine and readiness, health and version endpoints, request ids and
JSON logs, metrics across workers, the request deadline, error responses, the memory
watchdog, preflight, and the app builder that puts them together (`berth.application`).
A service imports from here; nothing here imports the service.
"""
