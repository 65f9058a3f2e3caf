# The active branch of each session and its queue policy (see chat.0009); 0005 fills them in.

import django.db.models.deletion
from django.db import migrations, models

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
            field=models.PositiveBigIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='leaf_line',
            field=models.PositiveIntegerField(db_default=1, default=1),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='lines',
            field=models.PositiveIntegerField(db_default=1, default=1),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='on_busy',
            field=models.CharField(choices=[('reject', 'Reject'), ('enqueue', 'Enqueue'), ('interrupt', 'Interrupt')], db_default='reject', default='reject', max_length=16),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='queued',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
