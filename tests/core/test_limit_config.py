"""``limit.*`` defaults, LiveKit's legacy ``room.*`` spellings, and the checks themselves."""

from __future__ import annotations

import pytest

from trackyard.core import limits
from trackyard.core.config import Config, ConfigError, LimitConfig


def test_defaults_are_livekits() -> None:
    cfg = Config.from_yaml("development: true")
    lim = cfg.limit
    assert (lim.max_metadata_size, lim.max_attributes_size) == (512 * 1024, 64 * 1024)
    assert (
        lim.max_room_name_length,
        lim.max_participant_identity_length,
        lim.max_participant_name_length,
    ) == (256, 256, 256)
    assert (lim.subscription_limit_video, lim.subscription_limit_audio) == (0, 0)
    assert cfg.room.enable_remote_unmute is False


def test_legacy_room_keys_win_when_set() -> None:
    cfg = Config.from_yaml(
        "room: {max_metadata_size: 100, max_room_name_length: 10,"
        " max_participant_identity_length: 5}\nlimit: {max_metadata_size: 9999}"
    )
    assert (
        cfg.limit.max_metadata_size,
        cfg.limit.max_room_name_length,
        cfg.limit.max_participant_identity_length,
    ) == (100, 10, 5)
    untouched = Config.from_yaml("limit: {max_metadata_size: 9999}")
    assert untouched.limit.max_metadata_size == 9999


def test_unknown_or_negative_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"limit\.max_metadata_sise: unknown config key"):
        Config.from_yaml("limit: {max_metadata_sise: 1}")
    with pytest.raises(ConfigError, match=r"limit\.max_participant_name_length"):
        Config.from_yaml("limit: {max_participant_name_length: lots}")
    # LiveKit: -1 disables a limit (we spell "no limit" 0)
    assert Config.from_yaml("limit: {max_participant_name_length: -1}").limit == LimitConfig(
        max_participant_name_length=0
    )


def test_sizes_are_utf8_bytes_and_zero_is_unlimited() -> None:
    lim = LimitConfig(max_metadata_size=4, max_participant_name_length=4)
    assert limits.check_metadata(lim, "abcd") == ""
    assert limits.check_metadata(lim, "abcé").startswith("metadata size exceeds limits")
    assert limits.check_name(lim, "ééé").startswith("name length exceeds limits")
    free = LimitConfig(max_metadata_size=0, max_participant_name_length=0)
    assert limits.check_metadata(free, "x" * 10**6) == ""
    assert limits.check_name(free, "x" * 10**4) == ""


def test_attributes_count_keys_and_values_after_the_update() -> None:
    lim = LimitConfig(max_attributes_size=10)
    current = {"ab": "cdef"}  # 6
    assert limits.check_attributes(lim, limits.merged_attributes(current, {"g": "hij"})) == ""
    over = limits.merged_attributes(current, {"g": "hijk"})  # 6 + 5
    assert limits.check_attributes(lim, over) == "attribute size exceeds limits: max size 10 bytes"
    # an empty value deletes, freeing its room
    assert limits.merged_attributes(current, {"ab": "", "x": "y"}) == {"x": "y"}


def test_join_check_names_the_first_limit() -> None:
    lim = LimitConfig(max_participant_identity_length=3, max_room_name_length=3)

    def check(room: str, identity: str) -> str:
        return limits.check_join(
            lim, room=room, identity=identity, name="", metadata="", attributes={}
        )

    assert check("abc", "abc") == ""
    assert check("abcd", "abcd") == "participant identity length exceeds limits: max length 3"
    assert check("abcd", "abc") == "room name length exceeds limits: max length 3"
