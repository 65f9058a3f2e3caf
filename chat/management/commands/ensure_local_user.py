from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create a local administrator with a random password when there is no user yet. The password is "
        "written to a file only its owner may read (--password-file, default .admin-password), never to the output."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", default=str(Path(settings.BASE_DIR) / ".admin-password"))

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        if User.objects.exists():
            return
        password = secrets.token_urlsafe(12)
        path = Path(str(options["password_file"]))
        # Mode 0600 from the moment it exists (os.open), so no one else reads it, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(path, 0o600)  # an older file of another mode
        User.objects.create_superuser(str(options["username"]), email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the local user '{options['username']}'; its password is in {path} (readable by you only).\n"
                "Change it at /admin/password_change/, then delete the file."
            )
        )
