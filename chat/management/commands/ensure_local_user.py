from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a local administrator with a random password (printed once) when there is no user yet."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default="admin")

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        if User.objects.exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(str(options["username"]), email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the local user '{options['username']}' with password: {password}\n"
                "It is shown only this once; change it at /admin/password_change/."
            )
        )
