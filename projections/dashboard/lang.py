"""Marking Chinese text for assistive technology: the seed's messages (更新失败...) and area names (大陆)
sit in English pages, and a screen reader reads them right only when told their language."""

from __future__ import annotations

import re

from markupsafe import Markup, escape

_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_RUN = re.compile(rf"[{_CJK}]+(?:[\s\d,.:;!?()/\-]*[{_CJK}]+)*")


def mark_chinese(value: object) -> Markup:
    """``value`` escaped, each run of Chinese in it wrapped in ``<span lang="zh">`` (punctuation,
    digits and spaces between two Chinese characters belong to the run)."""
    text = "" if value is None else str(value)
    out, end = [], 0
    for run in _RUN.finditer(text):
        out.append(escape(text[end:run.start()]))
        out.append(Markup('<span lang="zh">%s</span>') % run.group())
        end = run.end()
    out.append(escape(text[end:]))
    return Markup("").join(out)


def lang_attribute(value: object) -> Markup:
    """`` lang="zh"`` when ``value`` holds Chinese, else nothing: for elements that hold only text
    (an ``<option>``), where no ``<span>`` can go."""
    return Markup(' lang="zh"') if value is not None and _RUN.search(str(value)) else Markup("")
