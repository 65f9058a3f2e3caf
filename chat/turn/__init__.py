"""The sync side of a turn: steps that each run one short transaction and say what runs next.

Every step locks its session first (`locking`), writes, and records what should follow in the
outbox (`outbox`): frames for the session's sockets, a reply to stream, a tool call to drive.
Nothing here starts a task or touches the event loop; the engine (`chat.engine`) runs these
steps on its database threads and carries out what they return.
"""
