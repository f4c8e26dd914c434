"""ASGI primitives shared by the stages: problem responses, request state, client IP, routes."""
