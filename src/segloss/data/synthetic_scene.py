"""Procedural street scenes with Cityscapes labelIds (the drawing half of ``synthetic_city``).

A scene is a one-point-perspective street: sky, building facades with windows, sidewalks, a road
with lane marks, trees, thin poles (1–3 px) carrying traffic signs, pedestrians, cars, some
``static`` clutter and often the ego-vehicle hood (both ignored by the benchmark). Every object gets
a colour drawn from a wide, overlapping range (grey buildings, grey roads, grey skies; cars and
clothes of any colour), a texture and global lighting/noise, so a per-pixel colour lookup cannot
solve the task: shape, position and context are needed, as in real street scenes.

Drawing uses PIL on three canvases: ``labels`` (labelIds), ``objects`` (an object index whose
colour and texture amplitude are looked up when the image is rendered) and ``instances`` (the
Cityscapes instance id ``labelId * 1000 + k`` of each pedestrian and car, 0 elsewhere), from which
:func:`render_scene_instances` makes the ``*_gtFine_instanceIds.png`` image of the official iIoU.
The instance canvas draws nothing at random, so the images and labels are the same with or without it.
"""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
from PIL import Image, ImageDraw

from segloss.data.cityscapes_labels import LABEL_IDS

ROAD, SIDEWALK, BUILDING = LABEL_IDS["road"], LABEL_IDS["sidewalk"], LABEL_IDS["building"]
POLE, SIGN, VEGETATION = LABEL_IDS["pole"], LABEL_IDS["traffic sign"], LABEL_IDS["vegetation"]
SKY, PERSON, CAR = LABEL_IDS["sky"], LABEL_IDS["person"], LABEL_IDS["car"]
EGO, STATIC = LABEL_IDS["ego vehicle"], LABEL_IDS["static"]


class _Canvas:
    """Paints label, object-index and instance images together; each shape is one object with a colour.
    Shapes drawn between :meth:`begin_instance` and :meth:`end_instance` belong to one instance (a car of
    body, cabin, glass, wheels and lights); every other shape paints instance 0, so a later stuff shape
    (the ego hood) or a nearer object hides an instance exactly where it hides its label."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.labels = Image.new("L", (width, height), 0)
        self.objects = Image.new("I", (width, height), 0)
        self.instances = Image.new("I", (width, height), 0)
        self._dl, self._do = ImageDraw.Draw(self.labels), ImageDraw.Draw(self.objects)
        self._di = ImageDraw.Draw(self.instances)
        self.colors: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self.texture: list[float] = [0.0]
        self.instance = 0  # the instance id that shapes paint now (0: none)
        self._counts: dict[int, int] = {}  # instances begun per labelId

    def begin_instance(self, label: int) -> None:
        """The next shapes form one instance of ``label``: id ``label * 1000 + k``, k = 0, 1, … per label."""
        k = self._counts.get(label, 0)
        self._counts[label] = k + 1
        self.instance = label * 1000 + k

    def end_instance(self) -> None:
        self.instance = 0

    def _new(self, label: int, color, texture: float) -> tuple[int, int]:
        self.colors.append(tuple(float(c) for c in color))
        self.texture.append(texture)
        return label, len(self.colors) - 1

    def polygon(self, points, label: int, color, texture: float = 0.04) -> None:
        lab, obj = self._new(label, color, texture)
        pts = [(float(x), float(y)) for x, y in points]
        self._dl.polygon(pts, fill=lab)
        self._do.polygon(pts, fill=obj)
        self._di.polygon(pts, fill=self.instance)

    def rect(self, box, label: int, color, texture: float = 0.04) -> None:
        x0, y0, x1, y1 = (float(v) for v in box)
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label, color, texture)

    def ellipse(self, box, label: int, color, texture: float = 0.04) -> None:
        lab, obj = self._new(label, color, texture)
        box = [float(v) for v in box]
        self._dl.ellipse(box, fill=lab)
        self._do.ellipse(box, fill=obj)
        self._di.ellipse(box, fill=self.instance)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1))) * 255


def _any_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.15, 0.95))


def _grey(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(lo, hi))


def _lerp(a, b, t):
    return a + (b - a) * t


class _Street:
    """Perspective geometry: vanishing point, road edges and building base lines on both sides."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.horizon = rng.uniform(0.36, 0.5) * height
        self.vx = width / 2 + rng.normal(0, 0.08 * width)
        half_road = rng.uniform(0.3, 0.6) * width
        walk = rng.uniform(0.25, 0.6) * width
        # Bottom-row x of the road edge and of the building base line, per side (-1 left, +1 right).
        self.road_x = {-1: self.vx - half_road, 1: self.vx + half_road}
        self.base_x = {-1: self.vx - half_road - walk, 1: self.vx + half_road + walk}

    def ground(self, side: int, t: float, s: float) -> tuple[float, float]:
        """Point on the ground at depth ``s`` (0 = horizon, 1 = bottom row), ``t`` ∈ [0, 1] across
        the sidewalk from the curb (0) to the building line (1); t < 0 reaches onto the road."""
        edge = _lerp(self.road_x[side], self.base_x[side], t)
        return self.vx + (edge - self.vx) * s, self.horizon + (self.h - self.horizon) * s

    def road_point(self, t: float, s: float) -> tuple[float, float]:
        left, right = self.road_x[-1], self.road_x[1]
        x = _lerp(left, right, t)
        return self.vx + (x - self.vx) * s, self.horizon + (self.h - self.horizon) * s


def _sky_and_ground(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    kind = rng.integers(3)
    sky = (
        _hsv(rng.uniform(0.55, 0.64), rng.uniform(0.3, 0.7), rng.uniform(0.6, 0.95))
        if kind == 0
        else _grey(rng, 0.55, 0.95)
        if kind == 1
        else _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.5), rng.uniform(0.6, 0.9))
    )
    c.rect((0, 0, st.w, st.horizon + 1), SKY, sky, 0.02)
    walk = _grey(rng, 0.35, 0.8) if rng.random() < 0.7 else _hsv(rng.uniform(0, 0.1), 0.4, 0.6)
    c.rect((0, st.horizon, st.w, st.h), SIDEWALK, walk, 0.06)
    for side in (-1, 1):  # paving joints: darker lines across the sidewalk
        for s in np.geomspace(0.05, 1.5, int(rng.integers(6, 14))):
            a, b = st.ground(side, 0.0, s), st.ground(side, 1.0, s)
            c.polygon([a, b, (b[0], b[1] + 1), (a[0], a[1] + 1)], SIDEWALK, walk * 0.75, 0.03)
    road = _grey(rng, 0.18, 0.55)
    c.polygon(
        [(st.vx - 1, st.horizon), (st.vx + 1, st.horizon), (st.road_x[1], st.h), (st.road_x[-1], st.h)],
        ROAD,
        road,
        0.08,
    )
    curb = _grey(rng, 0.55, 0.95)
    for side in (-1, 1):  # curb stones along the road edge (Cityscapes labels curbs as sidewalk)
        width = rng.uniform(0.03, 0.06)
        c.polygon(
            [
                st.ground(side, 0, 0.0),
                st.ground(side, 0, 1.6),
                st.ground(side, width, 1.6),
                st.ground(side, width, 0.0),
            ],
            SIDEWALK,
            curb,
            0.03,
        )
        for t in (0.35, 0.7):  # joints along the walk
            a, b = st.ground(side, t, 0.02), st.ground(side, t, 1.6)
            c.polygon([a, b, (b[0] + 1, b[1]), (a[0] + 1, a[1])], SIDEWALK, walk * 0.75, 0.03)
    paint = _grey(rng, 0.8, 1.0) if rng.random() < 0.8 else _hsv(0.14, 0.8, 0.9)
    for s0 in np.arange(rng.uniform(0.05, 0.15), 1.0, 0.18):  # dashed centre line
        s1 = s0 + 0.08
        (xa, ya), (xb, yb) = st.road_point(0.5, s0), st.road_point(0.5, s1)
        da, db = 0.01 * s0 * st.w, 0.01 * s1 * st.w
        c.polygon([(xa - da, ya), (xa + da, ya), (xb + db, yb), (xb - db, yb)], ROAD, paint, 0.05)


def _buildings(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    for side in (-1, 1):
        bounds = np.sort(np.concatenate([[0.03, 1.8], np.geomspace(0.05, 1.6, 6) * rng.uniform(0.8, 1.2, 6)]))
        for s_a, s_b in itertools.pairwise(bounds):
            if rng.random() < 0.12:
                continue  # a gap in the street front
            height = rng.uniform(0.5, 2.2) * st.h
            color = _grey(rng, 0.3, 0.9) if rng.random() < 0.6 else _any_color(rng) * 0.9
            (xa, ya), (xb, yb) = st.ground(side, 1.0, s_a), st.ground(side, 1.0, s_b)
            quad = [(xa, ya), (xb, yb), (xb, yb - height * s_b), (xa, ya - height * s_a)]
            c.polygon(quad, BUILDING, color, 0.05)
            window = color * rng.uniform(0.3, 0.6) if rng.random() < 0.7 else color * 1.3 + 30
            rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
            for i in range(cols):
                u0, u1 = (i + 0.25) / cols, (i + 0.75) / cols
                for j in range(rows):
                    v0, v1 = (j + 0.3) / rows, (j + 0.7) / rows
                    pts = []
                    for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1)):
                        s = _lerp(s_a, s_b, u)
                        x, y = st.ground(side, 1.0, s)
                        pts.append((x, y - height * s * (0.1 + 0.85 * v)))
                    c.polygon(pts, BUILDING, np.clip(window, 0, 255), 0.03)


def _trees(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    autumn = rng.random() < 0.25
    for _ in range(int(rng.integers(1, 6))):
        side, s = int(rng.choice([-1, 1])), rng.uniform(0.15, 1.1)
        x, y = st.ground(side, rng.uniform(0.5, 0.95), s)
        trunk_h, r = rng.uniform(0.15, 0.35) * st.h * s, rng.uniform(0.08, 0.18) * st.h * s + 2
        bark = _hsv(rng.uniform(0.05, 0.1), 0.5, rng.uniform(0.2, 0.4))
        c.rect((x - 0.15 * r, y - trunk_h - r, x + 0.15 * r, y), VEGETATION, bark, 0.1)
        hue = rng.uniform(0.05, 0.15) if autumn else rng.uniform(0.2, 0.35)
        for _ in range(int(rng.integers(4, 10))):
            cx, cy = x + rng.normal(0, 0.6 * r), y - trunk_h - r + rng.normal(0, 0.5 * r)
            rr = r * rng.uniform(0.4, 0.8)
            leaf = _hsv(hue + rng.normal(0, 0.02), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.7))
            c.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), VEGETATION, leaf, 0.25)
    for side in (-1, 1):  # hedges along the building line
        if rng.random() < 0.4:
            s_a, s_b = sorted(rng.uniform(0.1, 1.5, 2))
            (xa, ya), (xb, yb) = st.ground(side, 0.97, s_a), st.ground(side, 0.97, s_b)
            hh = rng.uniform(0.04, 0.1) * st.h
            leaf = _hsv(rng.uniform(0.2, 0.35), 0.6, rng.uniform(0.25, 0.6))
            c.polygon([(xa, ya), (xb, yb), (xb, yb - hh * s_b), (xa, ya - hh * s_a)], VEGETATION, leaf, 0.35)


def _poles_and_signs(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(2, 7))):
        side, s = int(rng.choice([-1, 1])), rng.uniform(0.2, 1.0)
        x, y = st.ground(side, rng.uniform(0.03, 0.25), s)
        width = float(np.clip(round(3 * s + rng.uniform(-0.5, 0.5)), 1, 3))
        top = y - rng.uniform(0.35, 0.75) * st.h * s
        color = _grey(rng, 0.2, 0.7) if rng.random() < 0.7 else _hsv(0.35, 0.5, 0.3)
        x0 = round(x)
        c.rect((x0, top, x0 + width - 1, y), POLE, color, 0.03)
        if rng.random() < 0.7:
            size = max(4.0, rng.uniform(7, 14) * s)
            sign = _hsv(rng.choice([0.0, 0.6, 0.14, 0.33]), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
            cx, cy = x0 + width / 2, top + size / 2
            box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
            shape = rng.integers(3)
            if shape == 0:
                c.ellipse(box, SIGN, sign, 0.03)
            elif shape == 1:
                c.rect(box, SIGN, sign, 0.03)
            else:
                c.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], SIGN, sign, 0.03)


def _clutter(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(0, 3))):  # bins and boxes: labelled "static" (ignored)
        side, s = int(rng.choice([-1, 1])), rng.uniform(0.2, 1.0)
        x, y = st.ground(side, rng.uniform(0.2, 0.9), s)
        w, h = rng.uniform(4, 10) * s, rng.uniform(5, 12) * s
        c.rect((x - w / 2, y - h, x + w / 2, y), STATIC, _any_color(rng), 0.05)


def _people(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(0, 5))):
        side, s = int(rng.choice([-1, 1])), rng.uniform(0.25, 1.0)
        x, y = st.ground(side, rng.uniform(0.15, 0.85), s)
        h = rng.uniform(0.22, 0.34) * st.h * s + 5
        w = 0.3 * h
        skin = _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.95))
        c.begin_instance(PERSON)
        c.rect((x - w / 2, y - 0.5 * h, x - 0.05 * w, y), PERSON, _grey(rng, 0.1, 0.6), 0.05)
        c.rect((x + 0.05 * w, y - 0.5 * h, x + w / 2, y), PERSON, _grey(rng, 0.1, 0.6), 0.05)
        c.rect((x - w / 2, y - 0.85 * h, x + w / 2, y - 0.45 * h), PERSON, _any_color(rng), 0.05)
        hr = 0.08 * h
        c.ellipse((x - hr, y - h, x + hr, y - 0.84 * h), PERSON, skin, 0.03)
        c.end_instance()


def _cars(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    road_w = st.road_x[1] - st.road_x[-1]
    for s in np.sort(rng.uniform(0.12, 0.95, int(rng.integers(0, 5)))):  # far cars first
        x, y = st.road_point(rng.uniform(0.15, 0.85), s)
        w = rng.uniform(0.28, 0.38) * road_w * s
        h = w * rng.uniform(0.55, 0.75)
        body = _any_color(rng)
        c.begin_instance(CAR)
        c.rect((x - w / 2, y - 0.55 * h, x + w / 2, y - 0.12 * h), CAR, body, 0.04)
        cabin = [(x - 0.42 * w, y - 0.55 * h), (x + 0.42 * w, y - 0.55 * h), (x + 0.3 * w, y - h), (x - 0.3 * w, y - h)]
        c.polygon(cabin, CAR, body, 0.04)
        glass = _grey(rng, 0.05, 0.35)
        c.polygon(
            [
                (x - 0.35 * w, y - 0.58 * h),
                (x + 0.35 * w, y - 0.58 * h),
                (x + 0.26 * w, y - 0.93 * h),
                (x - 0.26 * w, y - 0.93 * h),
            ],
            CAR,
            glass,
            0.02,
        )
        for dx in (-0.32, 0.32):
            r = 0.14 * h
            c.ellipse((x + dx * w - r, y - 2 * r, x + dx * w + r, y), CAR, _grey(rng, 0.02, 0.15), 0.02)
        for dx in (-0.42, 0.36):
            light = _hsv(0.0, 0.9, 0.8) if rng.random() < 0.5 else _grey(rng, 0.85, 1.0)
            c.rect((x + dx * w, y - 0.45 * h, x + (dx + 0.06) * w, y - 0.36 * h), CAR, light, 0.02)
        c.end_instance()


def _ego_hood(c: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    if rng.random() < 0.7:
        depth = rng.uniform(0.05, 0.1) * st.h
        c.ellipse((-0.3 * st.w, st.h - depth, 1.3 * st.w, st.h + depth), EGO, _grey(rng, 0.05, 0.5), 0.02)


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((width + 2 * cell, height + 2 * cell), Image.BILINEAR)
    return np.asarray(img)[cell : cell + height, cell : cell + width]


def render_scene(rng: np.random.Generator, height: int = 128, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene. Returns ``(rgb uint8 H×W×3, labelIds uint8 H×W)``."""
    rgb, labels, _ = render_scene_instances(rng, height, width)
    return rgb, labels


def render_scene_instances(
    rng: np.random.Generator, height: int = 128, width: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene. Returns ``(rgb uint8 H×W×3, labelIds uint8 H×W, instanceIds uint16 H×W)``; the
    instance ids follow Cityscapes: ``labelId * 1000 + k`` on the pixels of the k-th pedestrian or car,
    the plain labelId everywhere else (stuff and ignored ids)."""
    canvas, street = _Canvas(height, width, rng), _Street(rng, height, width)
    for draw in (_sky_and_ground, _buildings, _trees, _poles_and_signs, _clutter, _people, _cars, _ego_hood):
        draw(canvas, street, rng)
    objects = np.asarray(canvas.objects, dtype=np.int64)
    colors = np.asarray(canvas.colors, dtype=np.float32)[objects]
    amp = np.asarray(canvas.texture, dtype=np.float32)[objects][..., None]
    grain = 0.5 * _value_noise(rng, height, width, 3) + 0.5 * rng.uniform(-1, 1, (height, width))
    rgb = colors * (1 + 2 * amp * grain[..., None].astype(np.float32))
    light = 1 + rng.uniform(-0.3, 0.3) * (np.linspace(-1, 1, width, dtype=np.float32)[None, :, None])
    light = light * (1 + 0.15 * _value_noise(rng, height, width, 32)[..., None])  # soft shadows
    cast = 1 + rng.normal(0, 0.07, 3).astype(np.float32)
    rgb = rgb * light * cast * rng.uniform(0.6, 1.2) + rng.normal(0, rng.uniform(2, 8), rgb.shape)
    labels, instances = np.asarray(canvas.labels, dtype=np.uint8), np.asarray(canvas.instances, dtype=np.int64)
    instance_ids = np.where(instances > 0, instances, labels).astype(np.uint16)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels, instance_ids
