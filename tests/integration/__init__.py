"""Integration tests: real brokers, job stores and ``pscheduler`` subprocesses.

This folder is a package (``integration``) so that its conftest and the sample
application (``integration.sampleapp``) have names of their own; the daemon
subprocesses import the sample application with ``tests/`` on PYTHONPATH.
"""
