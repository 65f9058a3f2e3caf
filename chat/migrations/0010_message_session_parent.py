# The (session, parent) index of the message tree (versions are the messages with one parent).
# On PostgreSQL it is built CONCURRENTLY, so writes to chat_message go on while it builds (this
# migration is not atomic); elsewhere as usual.

from django.db import migrations, models

INDEX = models.Index(fields=["session", "parent"], name="message_session_parent")


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS message_session_parent ON chat_message (session_id, parent_id)")
    else:
        schema_editor.add_index(apps.get_model("chat", "Message"), INDEX)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS message_session_parent")
    else:
        schema_editor.remove_index(apps.get_model("chat", "Message"), INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("chat", "0009_message_tree_and_queue")]
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="message", index=INDEX)],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
