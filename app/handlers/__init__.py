"""Thin HTTP handlers, one module per resource: arguments in, one service call, (model, status)."""
