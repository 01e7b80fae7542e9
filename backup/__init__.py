"""Berth's backup service: dumps on a schedule, off-site copies, verified restores and
point-in-time recovery. It runs in the database image (backup/Dockerfile), on Debian's
Python 3 and its standard library only, so pg_dump and pgBackRest always match the server.

`python3 -m backup --help` lists the commands; backup/cli.py is the entry point.
"""
