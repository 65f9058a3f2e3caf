# The conversation as a tree (chat.branches): each message's parent, line and depth, the lines
# that fork (Branch), and the queue of user messages sent while a turn runs (QueuedMessage).
# Existing messages are one line each session, every message the parent of the next; their
# parents and depths are filled in by sessions_app.0005, which also points each session at its
# last message; the (session, parent) index is built by 0010.
#
# On SQLite, adding the non-null `line` and `depth` makes Django rebuild chat_message, which drops
# the search triggers of chat.0008 and renumbers the rows: they are made again and the search
# table rebuilt at the end (as 0008 asks of such a migration).

import importlib
import uuid

import django.db.models.deletion
from django.db import migrations, models


def repair_search(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    search = importlib.import_module("chat.migrations.0008_search")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'chat_message_fts_%'")
        present = {row[0] for row in cursor.fetchall()}
        for statement in search.SQLITE[1:4]:  # the three triggers (the table itself survives the rebuild)
            name = statement.split()[2]
            if name not in present:
                cursor.execute(statement)
        cursor.execute("INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')")


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0008_search'),
        ('sessions_app', '0003_session_tokens'),
    ]

    operations = [
        # Undone last when the migration is rolled back (after the rebuild that undoing the fields makes).
        migrations.RunPython(migrations.RunPython.noop, repair_search),
        migrations.CreateModel(
            name='Branch',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('line', models.PositiveIntegerField()),
                ('base_line', models.PositiveIntegerField(blank=True, null=True)),
                ('base_seq', models.PositiveBigIntegerField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name='QueuedMessage',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('position', models.BigIntegerField()),
                ('content', models.TextField(blank=True, default='')),
                ('client_id', models.CharField(blank=True, max_length=64, null=True)),
                ('reply', models.BooleanField(default=True)),
                ('interrupt', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['session', 'position'],
            },
        ),
        migrations.AddField(
            model_name='message',
            name='depth',
            field=models.PositiveBigIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name='message',
            name='line',
            field=models.PositiveIntegerField(db_default=1, default=1),
        ),
        migrations.AddField(
            model_name='message',
            name='parent',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='chat.message'),
        ),
        migrations.AddField(
            model_name='branch',
            name='session',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='branches', to='sessions_app.chatsession'),
        ),
        migrations.AddField(
            model_name='queuedmessage',
            name='edit_of',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='chat.message'),
        ),
        migrations.AddField(
            model_name='queuedmessage',
            name='session',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='queue', to='sessions_app.chatsession'),
        ),
        migrations.AddConstraint(
            model_name='branch',
            constraint=models.UniqueConstraint(fields=('session', 'line'), name='branch_session_line_unique'),
        ),
        migrations.AddConstraint(
            model_name='queuedmessage',
            constraint=models.UniqueConstraint(fields=('session', 'position'), name='queued_session_position_unique'),
        ),
        migrations.AddConstraint(
            model_name='queuedmessage',
            constraint=models.UniqueConstraint(condition=models.Q(('client_id__isnull', False)), fields=('session', 'client_id'), name='queued_session_client_id_unique'),
        ),
        migrations.RunPython(repair_search, migrations.RunPython.noop),
    ]
