"""The texts the seed document fixes are kept, exactly or as a prefix, as events.md says."""

from __future__ import annotations

from bus.docs import render_events_md
from consumers.ops_executor.hot_server import APPLY_SKIPPED_ERL, not_applied
from consumers.ops_executor.rollout import ALL_DONE, summary

SEED_SKIPPED = "更新失败,不执行erl命令"  # the seed's update_data / erl_data of a server whose files failed
SEED_DONE = "全部完成"  # the seed's final_data


def test_a_server_whose_files_were_not_applied_keeps_the_seeds_text_and_says_why():
    assert APPLY_SKIPPED_ERL == SEED_SKIPPED  # erl_data: exactly
    result = not_applied("exit 1: cp: No space left on device")
    assert result.status is False
    assert result.data == "更新失败,不执行erl命令: exit 1: cp: No space left on device"
    assert result.data.startswith(SEED_SKIPPED)  # how a script of the old system matches update_data


def test_a_fully_successful_update_says_the_seeds_final_text():
    assert summary([], 7) == ALL_DONE == SEED_DONE


def test_events_md_says_how_to_match_the_seeds_texts_and_what_client_type_is():
    text = render_events_md()
    assert f"`{SEED_SKIPPED}: <why>`" in text and f'data.startswith("{SEED_SKIPPED}")' in text
    assert "**The ops executor ignores it**" in text
