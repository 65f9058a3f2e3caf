"""The async engine of a server process: it runs the sync steps and carries out what they say.

Layers, each calling only those below it (see .importlinter):

- `process`: the one `engine` of the process, bound to its event loop; dispatches what steps
  committed, heartbeat and sweeps, checkpoints, shutdown.
- `drive`: what follows a reply (tool calls, continuations, plan steps).
- `replies`: one task per streaming reply; cancel and catch-up from anywhere.
- `hub` (fan-out to this process's sockets), `bus` (to other processes), `db` (threads for steps).
"""
