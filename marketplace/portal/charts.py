"""Server-rendered SVG bar charts: geometry only, drawn by templates with presentation attributes
(no inline style, so the CSP stays strict and the charts work without JavaScript)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 12, 28


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: Decimal
    show_label: bool
    anchor: str


@dataclass(frozen=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    baseline: float = HEIGHT - BOTTOM
    left: int = LEFT

    @property
    def empty(self) -> bool:
        return not any(bar.value for bar in self.bars)


def _nice_max(value: Decimal) -> Decimal:
    if value <= 0:
        return Decimal(1)
    magnitude = Decimal(10) ** (len(str(int(value))) - 1) if value >= 1 else Decimal("0.1")
    for step in (1, 2, 2.5, 5, 10):
        top = magnitude * Decimal(str(step))
        if top >= value:
            return top
    return magnitude * 10


def bar_chart(points: list[tuple[str, Decimal]], *, label_every: int = 7) -> BarChart:
    top = _nice_max(max((v for _, v in points), default=Decimal(0)))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        h = float(value / top) * plot_h if top else 0.0
        bars.append(
            Bar(
                x=round(LEFT + i * slot + slot * 0.15, 1),
                y=round(TOP + plot_h - h, 1),
                width=round(slot * 0.7, 1),
                height=round(h, 1),
                label=label,
                value=value,
                show_label=(i % label_every == 0 and len(points) - i > 3) or i == len(points) - 1,
                anchor="end" if i == len(points) - 1 and i else "start",
            )
        )
    ticks = [
        Tick(y=round(TOP + plot_h * (1 - k / 4), 1), text=f"{top * k / 4:g}") for k in range(5)
    ]
    return BarChart(bars=bars, ticks=ticks)
