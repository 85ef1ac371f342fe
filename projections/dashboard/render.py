"""How the dashboard's pages show values: the Jinja2 environment and its filters (times, sizes, durations,
and Chinese text marked for assistive technology: the seed's messages (更新失败...) and area names (大陆)
sit in English pages, and a screen reader reads them right only when told their language)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.templating import Jinja2Templates

from projections.dashboard import charts


def templates(directory: Path) -> Jinja2Templates:
    """The pages' templates in ``directory``, with the filters below."""
    env = Environment(
        loader=FileSystemLoader(str(directory)),
        autoescape=True,  # event content is other teams' text: always escaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = _format_time
    env.filters["pretty_json"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
    env.filters["short"] = lambda value, n=8: value if len(value) <= n else value[:n] + "…"
    env.filters["bytes"] = _format_bytes
    env.filters["zh"] = mark_chinese
    env.filters["zh_lang"] = lang_attribute
    env.filters["duration"] = charts.duration
    env.filters["iso"] = lambda value: "" if value is None else value.isoformat()
    return Jinja2Templates(env=env)


def _format_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


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
