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


# The loss chart: the same geometry as portal.js draws live, so the page shows the curve
# without JavaScript and the script only redraws it as points arrive.
LOSS_W, LOSS_H = 640, 260
LOSS_LEFT, LOSS_RIGHT, LOSS_TOP, LOSS_BOTTOM = 48, 14, 12, 30
MAX_LINE_POINTS = 600


@dataclass(frozen=True)
class AxisLabel:
    x: float
    y: float  # the grid line's height, for y labels
    text: str
    anchor: str

    @property
    def text_y(self) -> float:  # a y label sits centred on its grid line
        return round(self.y + 4, 1)


@dataclass(frozen=True)
class LineChart:
    train: str  # polyline points "x,y x,y …"
    valid: str
    valid_dots: list[tuple[float, float]]
    grid: list[AxisLabel]  # y labels; their y is the grid line's
    steps: list[AxisLabel]
    width: int = LOSS_W
    height: int = LOSS_H
    left: int = LOSS_LEFT
    right_edge: int = LOSS_W - LOSS_RIGHT
    top: int = LOSS_TOP
    baseline: int = LOSS_H - LOSS_BOTTOM

    @property
    def empty(self) -> bool:
        return not self.train and not self.valid


def _thin(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    if len(points) <= most:
        return points
    step = len(points) / most
    return [points[int(i * step)] for i in range(most)] + [points[-1]]


def _nice_number(value: float) -> str:
    return f"{value:.3g}"


def loss_chart(train: list[tuple[float, float]], valid: list[tuple[float, float]]) -> LineChart:
    """Training (solid) and validation (dashed) loss against the step."""
    points = train + valid
    if not points:
        return LineChart(train="", valid="", valid_dots=[], grid=[], steps=[])
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1 = x1 if x1 != x0 else x0 + 1
    pad = (y1 - y0) * 0.08 or max(abs(y1) * 0.1, 0.1)
    y0, y1 = y0 - pad, y1 + pad

    def x_of(v: float) -> float:
        return LOSS_LEFT + (v - x0) / (x1 - x0) * (LOSS_W - LOSS_LEFT - LOSS_RIGHT)

    def y_of(v: float) -> float:
        return LOSS_TOP + (1 - (v - y0) / (y1 - y0)) * (LOSS_H - LOSS_TOP - LOSS_BOTTOM)

    def line(series: list[tuple[float, float]]) -> str:
        return " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in _thin(series, MAX_LINE_POINTS))

    grid = [
        AxisLabel(x=LOSS_LEFT - 6, y=round(y_of(v), 1), text=_nice_number(v), anchor="end")
        for v in (y0 + (y1 - y0) * k / 4 for k in range(5))
    ]
    steps = [
        AxisLabel(
            x=round(x_of(v), 1), y=LOSS_H - LOSS_BOTTOM + 18, text=f"step {round(v)}", anchor=a
        )
        for v, a in ((x0, "start"), (round((x0 + x1) / 2), "middle"), (x1, "end"))
    ]
    return LineChart(
        train=line(train),
        valid=line(valid),
        valid_dots=[(round(x_of(x), 1), round(y_of(y), 1)) for x, y in valid],
        grid=grid,
        steps=steps,
    )
