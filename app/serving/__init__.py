"""Serving the application: the HTTP protocol's bounds on clients, and the worker processes."""
