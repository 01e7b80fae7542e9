"""The service: its routes, models, schemas and queries. This is the code you change.

The stack's runtime it builds on lives in `berth/`.
"""
