"""Thin handlers, one module per resource: HTTP operations take their arguments, make one
service call and give (model, status); the websocket channels speak their frames and leave
the work to services.
"""
