from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from chat.models import Reaction
from tests.api import assert_error, create_session, messages_url, reactions_url, send_ok

pytestmark = pytest.mark.django_db

THUMBS = "\U0001f44d"
HEART = "\u2764\ufe0f"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
KEYCAP = "1\ufe0f\u20e3"


def reaction_url(message_id: str, emoji: str) -> str:
    return f"{reactions_url(message_id)}{quote(emoji)}/"


@pytest.fixture
def message(api) -> dict:
    session = create_session(api)
    return send_ok(api, session["id"], "react to me")


def test_add_reaction_is_201_with_the_aggregated_reactions(api, message):
    response = api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    assert response.status_code == 201, response.content
    assert response.json() == {"message_id": message["id"], "reactions": [{"emoji": THUMBS, "count": 1, "me": True}]}


@pytest.mark.parametrize("emoji", [THUMBS, HEART, FAMILY, KEYCAP, "\U0001f44d\U0001f3fd"], ids=["thumbs", "heart", "zwj", "keycap", "skin-tone"])
def test_add_reaction_accepts_real_emoji(api, message, emoji):
    response = api.post(reactions_url(message["id"]), {"emoji": emoji}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["reactions"][0]["emoji"] == emoji


def test_add_the_same_reaction_again_is_200_and_the_count_is_unchanged(api, message):
    assert api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json").status_code == 201
    again = api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    assert again.status_code == 200, again.content
    assert again.json()["reactions"] == [{"emoji": THUMBS, "count": 1, "me": True}]
    assert Reaction.objects.count() == 1


def test_several_emoji_are_listed_in_order_of_first_use(api, message):
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    body = api.post(reactions_url(message["id"]), {"emoji": HEART}, format="json").json()
    assert body["reactions"] == [{"emoji": THUMBS, "count": 1, "me": True}, {"emoji": HEART, "count": 1, "me": True}]


def test_remove_reaction_is_204_and_it_is_gone(api, message):
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    api.post(reactions_url(message["id"]), {"emoji": HEART}, format="json")
    response = api.delete(reaction_url(message["id"], THUMBS))
    assert response.status_code == 204, response.content
    assert not response.content
    listed = api.get(messages_url(message["session"])).json()["results"][0]
    assert listed["reactions"] == [{"emoji": HEART, "count": 1, "me": True}]
    assert list(Reaction.objects.values_list("emoji", flat=True)) == [HEART]


def test_remove_a_reaction_that_does_not_exist_is_404(api, message):
    assert_error(api.delete(reaction_url(message["id"], THUMBS)), 404, "not_found")


def test_remove_a_reaction_twice_is_404_the_second_time(api, message):
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    assert api.delete(reaction_url(message["id"], THUMBS)).status_code == 204
    assert_error(api.delete(reaction_url(message["id"], THUMBS)), 404, "not_found")


def test_removing_my_reaction_leaves_other_users_reactions(api, message, other_user):
    Reaction.objects.create(message_id=message["id"], user=other_user, emoji=THUMBS)
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    assert api.delete(reaction_url(message["id"], THUMBS)).status_code == 204
    listed = api.get(messages_url(message["session"])).json()["results"][0]
    assert listed["reactions"] == [{"emoji": THUMBS, "count": 1, "me": False}]


@pytest.mark.parametrize(
    "emoji",
    ["abc", "", "\U0001f600" * 40, "x" * 40, "<script>", "<script>alert(1)</script>", " ", "\U0001f44d abc", "1", None, 5, ["\U0001f44d"]],
    ids=["letters", "empty", "40-emoji", "40-chars", "tag", "script", "space", "mixed", "digit", "null", "number", "list"],
)
def test_add_reaction_with_a_bad_emoji_is_400(api, message, emoji):
    response = api.post(reactions_url(message["id"]), {"emoji": emoji}, format="json")
    body = assert_error(response, 400, "validation_error")
    assert "emoji" in body["fields"]
    assert not Reaction.objects.exists()


def test_add_reaction_without_emoji_is_400(api, message):
    assert_error(api.post(reactions_url(message["id"]), {}, format="json"), 400, "validation_error")


def test_reacting_to_another_users_message_is_404_and_nothing_changes(api, other_api, message):
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    foreign = other_api.post(reactions_url(message["id"]), {"emoji": HEART}, format="json")
    missing = other_api.post(reactions_url(str(uuid.uuid4())), {"emoji": HEART}, format="json")
    assert_error(foreign, 404, "not_found")
    assert foreign.json() == missing.json()
    assert_error(other_api.delete(reaction_url(message["id"], THUMBS)), 404, "not_found")
    assert list(Reaction.objects.values_list("emoji", flat=True)) == [THUMBS]
    listed = api.get(messages_url(message["session"])).json()["results"][0]
    assert listed["reactions"] == [{"emoji": THUMBS, "count": 1, "me": True}]


def test_reacting_to_a_missing_or_malformed_message_is_404(api):
    assert_error(api.post(reactions_url(str(uuid.uuid4())), {"emoji": THUMBS}, format="json"), 404, "not_found")
    assert_error(api.post(reactions_url("not-a-uuid"), {"emoji": THUMBS}, format="json"), 404, "not_found")
    assert_error(api.delete(reaction_url("not-a-uuid", THUMBS)), 404, "not_found")


def test_reactions_appear_aggregated_in_the_messages_list(api, user, other_user, make_user):
    session = create_session(api)
    first = send_ok(api, session["id"], "one")
    second = send_ok(api, session["id"], "two")
    carol = make_user("carol")
    # Reactions by other people (e.g. added through the admin) count in the aggregate.
    Reaction.objects.create(message_id=first["id"], user=other_user, emoji=THUMBS)
    Reaction.objects.create(message_id=first["id"], user=carol, emoji=THUMBS)
    Reaction.objects.create(message_id=first["id"], user=carol, emoji=HEART)
    assert api.post(reactions_url(first["id"]), {"emoji": THUMBS}, format="json").status_code == 201
    assert api.post(reactions_url(second["id"]), {"emoji": HEART}, format="json").status_code == 201

    results = api.get(messages_url(session["id"])).json()["results"]
    assert results[0]["reactions"] == [
        {"emoji": THUMBS, "count": 3, "me": True},
        {"emoji": HEART, "count": 1, "me": False},
    ]
    assert results[1]["reactions"] == [{"emoji": HEART, "count": 1, "me": True}]


@pytest.mark.parametrize("emoji", ["\x00", "not-an-emoji", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "x" * 300])
def test_remove_with_a_path_that_is_no_emoji_is_404_never_500(api, message, emoji):
    api.post(reactions_url(message["id"]), {"emoji": THUMBS}, format="json")
    assert_error(api.delete(reaction_url(message["id"], emoji)), 404, "not_found")
    assert Reaction.objects.count() == 1


def test_one_user_may_put_at_most_ten_different_reactions_on_a_message(api, message):
    emoji = [chr(0x1F600 + i) for i in range(11)]
    for e in emoji[:10]:
        assert api.post(reactions_url(message["id"]), {"emoji": e}, format="json").status_code == 201
    body = assert_error(api.post(reactions_url(message["id"]), {"emoji": emoji[10]}, format="json"), 400, "validation_error")
    assert "At most 10" in body["detail"]
    # Adding one already there is still fine, and removing one makes room.
    assert api.post(reactions_url(message["id"]), {"emoji": emoji[0]}, format="json").status_code == 200
    assert api.delete(reaction_url(message["id"], emoji[0])).status_code == 204
    assert api.post(reactions_url(message["id"]), {"emoji": emoji[10]}, format="json").status_code == 201
    assert Reaction.objects.filter(message_id=message["id"]).count() == 10
