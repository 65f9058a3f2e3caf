# The active branch of each session and its queue policy (see chat.0009). Existing sessions are
# linear: every message's parent is the one before it, its depth its place, and the session's
# active leaf its last message.

import django.db.models.deletion
from django.db import migrations, models

PG_MESSAGES = """
UPDATE chat_message m SET parent_id = r.prev, depth = r.n
FROM (SELECT id, LAG(id) OVER w AS prev, ROW_NUMBER() OVER w AS n FROM chat_message WINDOW w AS (PARTITION BY session_id ORDER BY seq)) r
WHERE m.id = r.id
"""
SQLITE_MESSAGES = """
UPDATE chat_message SET parent_id = r.prev, depth = r.n
FROM (SELECT id, LAG(id) OVER w AS prev, ROW_NUMBER() OVER w AS n FROM chat_message WINDOW w AS (PARTITION BY session_id ORDER BY seq)) AS r
WHERE chat_message.id = r.id
"""
SESSIONS = """
UPDATE sessions_app_chatsession SET
  leaf_id = (SELECT m.id FROM chat_message m WHERE m.session_id = sessions_app_chatsession.id ORDER BY m.seq DESC LIMIT 1),
  leaf_depth = COALESCE((SELECT m.depth FROM chat_message m WHERE m.session_id = sessions_app_chatsession.id ORDER BY m.seq DESC LIMIT 1), 0)
"""


def link_messages(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(PG_MESSAGES)
        elif connection.vendor == "sqlite" and connection.Database.sqlite_version_info >= (3, 33):
            cursor.execute(SQLITE_MESSAGES)
        else:  # an older SQLite (no UPDATE ... FROM): a session at a time
            Message = apps.get_model("chat", "Message")
            for session_id in Message.objects.values_list("session_id", flat=True).distinct():
                previous = None
                for depth, (message_id,) in enumerate(Message.objects.filter(session_id=session_id).order_by("seq").values_list("pk"), start=1):
                    Message.objects.filter(pk=message_id).update(parent_id=previous, depth=depth)
                    previous = message_id
        cursor.execute(SESSIONS)


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0009_message_tree_and_queue'),
        ('sessions_app', '0003_session_tokens'),
    ]

    operations = [
        migrations.AddField(
            model_name='chatsession',
            name='leaf',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='chat.message'),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='leaf_depth',
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='leaf_line',
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='lines',
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='on_busy',
            field=models.CharField(choices=[('reject', 'Reject'), ('enqueue', 'Enqueue'), ('interrupt', 'Interrupt')], default='reject', max_length=16),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='queued',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(link_messages, migrations.RunPython.noop),
    ]
