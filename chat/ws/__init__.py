"""The socket front door: `/ws/sessions/{id}/`, its authentication and its route.

It parses and checks frames, then calls the engine (chat.engine), which runs the same steps
the REST API runs and writes every socket's frames.
"""
