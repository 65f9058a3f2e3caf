# Existing sessions are linear: every message's parent is the one before it, its depth its place,
# and the session's active leaf its last message. Filled in a few hundred sessions at a time, each
# batch its own transaction (the migration is not atomic), so a large install does not hold a lock
# on every message at once while it runs.

from django.db import migrations, transaction

BATCH = 500

MESSAGES = {
    "postgresql": """
UPDATE chat_message m SET parent_id = r.prev, depth = r.n
FROM (SELECT id, LAG(id) OVER w AS prev, ROW_NUMBER() OVER w AS n FROM chat_message WHERE session_id IN ({ids})
      WINDOW w AS (PARTITION BY session_id ORDER BY seq)) r
WHERE m.id = r.id
""",
    "sqlite": """
UPDATE chat_message SET parent_id = r.prev, depth = r.n
FROM (SELECT id, LAG(id) OVER w AS prev, ROW_NUMBER() OVER w AS n FROM chat_message WHERE session_id IN ({ids})
      WINDOW w AS (PARTITION BY session_id ORDER BY seq)) AS r
WHERE chat_message.id = r.id
""",
}
SESSIONS = """
UPDATE sessions_app_chatsession SET
  leaf_id = (SELECT m.id FROM chat_message m WHERE m.session_id = sessions_app_chatsession.id ORDER BY m.seq DESC LIMIT 1),
  leaf_depth = COALESCE((SELECT m.depth FROM chat_message m WHERE m.session_id = sessions_app_chatsession.id ORDER BY m.seq DESC LIMIT 1), 0)
WHERE id IN ({ids})
"""


def link_messages(apps, schema_editor):
    connection = schema_editor.connection
    ChatSession = apps.get_model("sessions_app", "ChatSession")
    Message = apps.get_model("chat", "Message")
    window = connection.vendor == "postgresql" or (connection.vendor == "sqlite" and connection.Database.sqlite_version_info >= (3, 33))
    ids = list(ChatSession.objects.order_by("pk").values_list("pk", flat=True))
    for first in range(0, len(ids), BATCH):
        batch = ids[first : first + BATCH]
        keys = [ChatSession._meta.pk.get_db_prep_value(pk, connection) for pk in batch]
        marks = ", ".join(["%s"] * len(keys))
        with transaction.atomic(using=schema_editor.connection.alias), connection.cursor() as cursor:
            if window:
                cursor.execute(MESSAGES[connection.vendor].format(ids=marks), keys)
            else:  # another database, or an older SQLite (no UPDATE ... FROM): a session at a time
                for session_id in batch:
                    previous = None
                    for depth, (message_id,) in enumerate(Message.objects.filter(session_id=session_id).order_by("seq").values_list("pk"), start=1):
                        Message.objects.filter(pk=message_id).update(parent_id=previous, depth=depth)
                        previous = message_id
            cursor.execute(SESSIONS.format(ids=marks), keys)


class Migration(migrations.Migration):
    atomic = False  # a transaction per batch of sessions

    dependencies = [
        ("sessions_app", "0004_message_tree_and_queue"),
        ("chat", "0010_message_session_parent"),
    ]

    operations = [migrations.RunPython(link_messages, migrations.RunPython.noop)]
