# The token totals of a session (see chat.usage); chat.0007 fills them for existing replies.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_app', '0002_session_message_count'),
    ]

    operations = [
        migrations.AddField(
            model_name='chatsession',
            name='completion_tokens',
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='chatsession',
            name='prompt_tokens',
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
