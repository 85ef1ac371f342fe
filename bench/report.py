"""Writing a benchmark's section into BENCHMARKS.md, with the machine and date.

Each benchmark owns one section between ``<!-- bench:NAME -->`` markers, so running one
benchmark rewrites only its own figures.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Speed and memory goals are measured here, never in timed tests. Every figure is taken against
a floor run in the same invocation on the same machine (a bare library loop, or the same work
done directly), and reported as a ratio and as absolute numbers. Run them with
`.venv/bin/python -m bench.<name>` (`bench.bus`, `bench.executor`, `bench.projection`, `bench.replay`, `bench.paired`,
`bench.dashboard`, `bench.soak`, `bench.ssh`); each rewrites its own
section below.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    rabbit = ""
    try:
        out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True, timeout=20)
        rabbit = f", RabbitMQ {out.stdout.strip()}" if out.returncode == 0 else ""
    except OSError:
        pass
    return (f"{os.cpu_count()} × {cpu}{mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{rabbit}")


@dataclass
class Section:
    name: str
    title: str
    goal: str
    table: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        head, *rows = self.table
        lines = [f"## {self.title}", "", f"Goal: {self.goal}", "",
                 f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def write(section: Section) -> None:
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else HEADER
    start, end = f"<!-- bench:{section.name} -->", f"<!-- /bench:{section.name} -->"
    block = f"{start}\n{section.render()}{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    REPORT.write_text(text, encoding="utf-8")
    print(section.render())
