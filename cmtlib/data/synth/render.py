"""One film: anatomy, bones, lesion and imaging chain, to an 8-bit image and its masks; and its twins.

The film is built as a density map (0 outside the body, about 1 through the mediastinum and
abdomen, about 0.4 over aerated lung), blurred, turned into brightness with an exponential
(denser = brighter, saturating like a detector), then the source's look: contrast, gamma,
edge enhancement, noise and its side marker; then the planted cues it carries (cues.py).

Twins: the same film with one thing removed (`render_with_twins`). Every part of a film draws from
its own generator (the anatomy, pose and imaging chain from the film's, the lesion from the
patient's and the film's jitter, each cue from its own), and removing a part re-runs only what
follows it with the same generator state, so a twin differs from its film only where the removed
part acted (see `Twin`):

    lesion       the same density without the lesion (atelectasis keeps its raised hemidiaphragm:
                 volume loss is anatomy here, the opacity is the lesion), the same exposure.
    source       the same density exposed with the other site's look (synth-b -> synth-a), marker
                 letter and corner included.
    view         the film drawn again in the other view (AP -> PA) with every draw the same.
    cue:<name>   without the marker, text, frame or tubes; at full size instead of half (size).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from cmtlib.data.synth import cues as planted
from cmtlib.data.synth.anatomy import Chest, build_chest, smoothstep
from cmtlib.data.synth.bones import bones
from cmtlib.data.synth.cohort import Case
from cmtlib.data.synth.disease import LESIONS, Lesion
from cmtlib.data.synth.texture import glyph, vessel_map
from cmtlib.data.synth.ties import CUES

IMAGE_TAG, LESION_TAG, JITTER_TAG = 0x1A6E, 0x1E51, 0x717E

# How the sites' films differ: site b is a noisier, flatter, softer unit with a foggy background;
# site c (the external site, held out) a harder, sharper one: higher gain and contrast, stronger
# edge enhancement and less blur than either training site, its marker in another corner.
SOURCE_LOOK = {
    "synth-a": {"gain": 1.3, "gamma": 0.9, "noise": 0.012, "blur": 1.0, "sharpen": 0.6, "fog": 0.0, "marker": ("R", "left")},
    "synth-b": {"gain": 1.15, "gamma": 1.25, "noise": 0.03, "blur": 1.4, "sharpen": 0.0, "fog": 0.05, "marker": ("L", "right")},
    "synth-c": {"gain": 1.55, "gamma": 0.75, "noise": 0.02, "blur": 0.7, "sharpen": 1.1, "fog": 0.02, "marker": ("R", "right")},
}
OTHER_SITE = {"synth-b": "synth-a"}  # the source twin: a synth-b film drawn with synth-a's look
AIR = 0.8       # density a fully aerated lung removes
GAUSS_TRUNCATE = 4.0  # scipy's default: a gaussian filter reaches int(4 sigma + 0.5) pixels


@dataclass
class Film:
    image: np.ndarray            # (S, S) uint8
    lung: np.ndarray             # (S, S) bool ground-truth lung mask
    disease: np.ndarray | None   # (S, S) bool, None where the lesion has no lung-field mask
    lungs: tuple[np.ndarray, np.ndarray]  # the image-left and image-right lung masks (for boxes)
    body: np.ndarray             # (S, S) bool: inside the body outline
    heart_width: float           # fraction of the image side (ground truth, for tests)
    cues: tuple[str, ...] = ()   # the tied cues it carries (Case.cues, plus the marker when drawn and tied)


@dataclass
class Twin:
    """A film with one thing removed. `region` is where that thing acted (before the imaging chain),
    `reach` how many pixels the chain spreads a change by; `changed()` is the film's pixels where the
    twin may differ from it: everywhere else the two are equal bit for bit. `region` is None where the
    whole film changes (source, view, size)."""

    name: str                    # lesion, source, view or the cue's name
    removed: str                 # twins.csv's `removed`: lesion, source, view or cue:<name>
    film: Film
    region: np.ndarray | None    # (S, S) bool at the full film size
    reach: int
    small: bool = False          # the film is stored at half size (the size cue)

    def changed(self) -> np.ndarray | None:
        """(S, S) bool at the stored film's size: `region` dilated by `reach` (the chain's filters are
        separable, so a square), shrunk when the film is stored small; None where all may change."""
        if self.region is None:
            return None
        out = maximum_filter(self.region, size=2 * self.reach + 1) if self.reach else self.region
        return planted.shrink_any(out) if self.small else out


@dataclass
class _Scene:
    """Everything of one film before the imaging chain, the lesion and tubes kept apart."""

    case: Case
    chest: Chest
    terms: dict[str, np.ndarray]   # the density's lesion-free terms
    lesion: Lesion
    tubes: np.ndarray | None
    rng: np.random.Generator       # the film's generator, at the imaging chain


def render(case: Case, size: int, seed: int) -> Film:
    """Draw the film of `case` at size x size pixels; deterministic for (case, size, seed)."""
    return render_with_twins(case, size, seed, twins=False)[0]


def render_with_twins(case: Case, size: int, seed: int, twins: bool = True) -> tuple[Film, list[Twin]]:
    """The film of `case` and its twins: one without the lesion when it has a lung-field lesion, and
    one per tied cue it carries (module docstring)."""
    scene = _scene(case, size, seed, case.view)
    look = SOURCE_LOOK[case.source]
    film, layers = _film(scene, seed, look, with_lesion=True, with_tubes=True)
    if not twins:
        return film, []
    out: list[Twin] = []
    small = "size" in case.cues
    reach = _reach(look, size)
    if film.disease is not None and film.disease.any():
        twin, _ = _film(scene, seed, look, with_lesion=False, with_tubes=True)
        out.append(Twin("lesion", "lesion", twin, _footprint(scene.lesion), reach, small))
    for cue in film.cues:
        if cue == "source":
            twin, _ = _film(scene, seed, SOURCE_LOOK[OTHER_SITE[case.source]], with_lesion=True, with_tubes=True)
            out.append(Twin(cue, "source", twin, None, 0))
        elif cue == "view":
            other = _scene(replace(case, view="PA" if case.view == "AP" else "AP"), size, seed, case.view)
            twin, _ = _film(other, seed, look, with_lesion=True, with_tubes=True)
            out.append(Twin(cue, "view", twin, None, 0))
        elif cue == "tubes":
            twin, _ = _film(scene, seed, look, with_lesion=True, with_tubes=False)
            out.append(Twin(cue, "cue:tubes", twin, scene.tubes != 0, reach, small))
        elif cue == "size":
            out.append(Twin(cue, "cue:size", layers["full"], None, 0))
        else:  # marker, text, border: marks on the exposed film
            twin = replace(layers.get("full", film), image=_burn(layers["exposed"], layers["marks"], skip=cue))
            out.append(Twin(cue, f"cue:{cue}", _small(twin) if small else twin, layers["marks"][cue][0], 0, small))
    for t in out:
        t.film.cues = _without(film.cues, t.name)
    return film, out


def _scene(case: Case, size: int, seed: int, drawn_view: str) -> _Scene:
    """Anatomy, bones, lesion and tubes of the film of `case` (its view), with the draws of `drawn_view`."""
    stream = [case.index] if case.stream == 0 else [case.stream, case.index]
    rng = np.random.default_rng([seed, IMAGE_TAG, *stream])
    # The lesion draws from its own streams (its shape per patient, its jitter per film), so the
    # same film with and without the lesion differs only by the lesion.
    lrng = np.random.default_rng([LESION_TAG, case.disease_seed])
    jrng = np.random.default_rng([seed, JITTER_TAG, *stream])
    a = case.anatomy
    raise_by = 0.02 + 0.03 * case.severity if case.kind == "atelectasis" else 0.0
    chest = build_chest(a, case.view, rng, size, raise_side=case.side, raise_by=raise_by, drawn_view=drawn_view)
    x, y = chest.x, chest.y
    fields = chest.fields

    # Air: thickest mid-lung, thin at the chest wall, apex and behind the heart.
    air = np.zeros((size, size), np.float32)
    for lung in chest.lungs.values():
        depth = np.sqrt(np.clip(4.0 * lung.across * (1.0 - lung.across), 0, 1))
        air += lung.field * depth * (0.65 + 0.35 * smoothstep(0.0, 0.3, lung.v))
    air *= 1.0 - 0.85 * chest.heart_depth - 0.1 * chest.heart

    hila = {}
    for side, lung in chest.lungs.items():
        hila[side] = (a.mid + side * (a.mediast_hw + 0.035), lung.top + 0.4 * (lung.base - lung.top))
    height = 0.5 * sum(lung.base - lung.top for lung in chest.lungs.values())
    vessels = vessel_map(x, y, hila, a.mid, height, a.vessel_template) * fields
    hilum = sum(np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / 0.03 ** 2) for hx, hy in hila.values())
    lesion = LESIONS[case.kind](case, chest, lrng, jrng)
    if case.kind == "covid" and case.opacity != 1.0:  # a fainter (or denser) disease, drawn where it always was; at 1.0 the films stay byte for byte
        lesion = replace(lesion, density=(lesion.density * np.float32(case.opacity)).astype(np.float32))

    carina = min(lung.top for lung in chest.lungs.values()) + 0.16
    trachea = smoothstep(0.02, 0.012, np.abs(x - a.mid - 0.004)) * smoothstep(carina, carina - 0.05, y)
    bubble = np.zeros_like(air)
    if a.gastric_bubble:
        left = chest.lungs[1]
        bx, by = a.mid + 0.5 * a.thorax_hw, left.base - 0.5 * a.dome + 0.05
        bubble = np.sqrt(np.clip(1.0 - ((x - bx) / 0.06) ** 2 - ((y - by) / 0.032) ** 2, 0, 1)) * (y > by - 0.01)
    terms = {
        "air": air, "vessels": vessels, "bones": bones(chest, a, case.view, case.age, rng),
        "hilum": 0.12 * hilum * fields, "soft": _soft_tissue(chest, case), "trachea": trachea, "bubble": bubble,
    }
    tubes = planted.tubes(case, seed, chest) if "tubes" in case.cues else None
    return _Scene(case, chest, terms, lesion, tubes, rng)


def _density(scene: _Scene, with_lesion: bool, with_tubes: bool) -> np.ndarray:
    """The film's density, in the order of operations it always had (the films stay byte for byte
    what they were). Without the lesion its terms are zeros: x + 0.0 == x, so every pixel the lesion
    never touched keeps its exact value; without tubes the addition is skipped."""
    t, chest = scene.terms, scene.chest
    lesion = scene.lesion if with_lesion else Lesion(np.zeros_like(t["air"]), None)
    vessels = t["vessels"]
    if lesion.no_vessels is not None:
        vessels = vessels * ~lesion.no_vessels
    markings = 0.1 * vessels
    if lesion.bronchograms is not None:
        markings = np.where(lesion.bronchograms, -0.12 * vessels, markings)
    air = t["air"]
    if lesion.extra_air is not None:
        air = air + lesion.extra_air
    density = (
        chest.body - AIR * air + 0.06 * chest.heart_depth + t["bones"]
        + markings + t["hilum"] + t["soft"] + lesion.density
        - 0.12 * t["trachea"] - 0.22 * t["bubble"]
    )
    density = np.clip(density, 0, None) * (chest.body > 0)
    if with_tubes and scene.tubes is not None:
        density = density + scene.tubes  # leads and tubes show over the air beside the body too
    return density


def _film(scene: _Scene, seed: int, look: dict, with_lesion: bool, with_tubes: bool) -> tuple[Film, dict]:
    """Expose the scene (with a copy of its generator, so every exposure makes the same draws) and
    burn in the marks; returns the film and its layers (the exposed image before any mark, the marks,
    the full-size film of a film stored small) for the twins."""
    case, chest, size = scene.case, scene.chest, scene.chest.size
    rng = copy.deepcopy(scene.rng)
    exposed = _expose(_density(scene, with_lesion, with_tubes), look, rng, size)
    marks: dict[str, tuple[np.ndarray, np.ndarray | float]] = {}  # name -> (pixels, values), in burn-in order
    drawn = rng.random() < case.p_marker
    if drawn:
        marks["marker"] = (_marker_mask(look, size), 0.97)
    if "border" in case.cues:
        marks["border"] = planted.border(case, seed, size)
    if "text" in case.cues:
        marks["text"] = (planted.text_mask(case, seed, size), planted.BRIGHT)
    lesion = scene.lesion.mask if with_lesion else (None if scene.lesion.mask is None else np.zeros_like(scene.lesion.mask))
    lung_r, lung_l = chest.lungs[-1].field & ~chest.heart, chest.lungs[1].field & ~chest.heart
    tied = case.cues + (("marker",) if drawn and case.marker_tied else ())
    film = Film(_burn(exposed, marks), lung_r | lung_l, lesion, (lung_r, lung_l), chest.body > 0, chest.heart_width,
                tuple(c for c in CUES if c in tied))
    layers = {"exposed": exposed, "marks": marks}
    if "size" in case.cues:
        layers["full"] = film
        film = _small(film)
    return film, layers


def _burn(exposed: np.ndarray, marks: dict, skip: str | None = None) -> np.ndarray:
    """The 8-bit film: the exposed image with the marks burned in, in order (all but `skip`)."""
    img = exposed.copy()
    for name, (pixels, values) in marks.items():
        if name != skip:
            img[pixels] = values if np.isscalar(values) else values[pixels]
    return _quantise(img)


def _small(film: Film) -> Film:
    """The film stored at half its side (the size cue): image and every mask."""
    disease = None if film.disease is None else planted.shrink(film.disease)
    return replace(film, image=planted.shrink(film.image), lung=planted.shrink(film.lung), disease=disease,
                   lungs=(planted.shrink(film.lungs[0]), planted.shrink(film.lungs[1])), body=planted.shrink(film.body))


def _without(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    return tuple(n for n in names if n != name)


def _footprint(lesion: Lesion) -> np.ndarray:
    """Where a lesion changes the density: its own, its air, the markings it hides or darkens."""
    region = lesion.density != 0
    for extra in (lesion.extra_air, lesion.no_vessels, lesion.bronchograms):
        if extra is not None:
            region = region | (extra != 0)
    return region


def _reach(look: dict, size: int) -> int:
    """Pixels a density change spreads by through the imaging chain: the blur, then the edge
    enhancement's gaussian (scipy's filters reach int(truncate * sigma + 0.5) pixels)."""
    px = size / 256.0
    out = int(GAUSS_TRUNCATE * 0.9 * px * look["blur"] + 0.5)
    if look["sharpen"]:
        out += int(GAUSS_TRUNCATE * 3.0 * px + 0.5)
    return out


def _soft_tissue(chest: Chest, case: Case) -> np.ndarray:
    """Extra soft-tissue density: breast shadows over the lower lateral lungs, hilar vessels."""
    a, x, y = case.anatomy, chest.x, chest.y
    out = np.zeros((chest.size, chest.size), np.float32)
    if a.breast > 0:
        for side, lung in chest.lungs.items():
            cx, cy = chest.mid + side * 0.6 * a.thorax_hw, lung.base - 0.06
            d2 = ((x - cx) / 0.2) ** 2 + ((y - cy) / 0.13) ** 2
            out += a.breast * np.sqrt(np.sqrt(np.clip(1.0 - d2, 0, 1)))
    return out


def _expose(density: np.ndarray, look: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """Density -> film brightness (float, before marks) through the source's imaging chain."""
    px = size / 256.0  # blur widths are set at 256 px and scale with the film
    d = gaussian_filter(density, sigma=0.9 * px * look["blur"], mode="nearest", truncate=GAUSS_TRUNCATE)
    gain = look["gain"] * rng.uniform(0.8, 1.2)  # exposure varies film to film
    img = (1.0 - np.exp(-gain * d)) / (1.0 - np.exp(-gain * 1.45))
    if look["sharpen"]:
        img = img + look["sharpen"] * (img - gaussian_filter(img, sigma=3.0 * px, mode="nearest", truncate=GAUSS_TRUNCATE))
    img = np.clip(img, 0, 1) ** (look["gamma"] * rng.uniform(0.95, 1.05))
    img = look["fog"] + (1.0 - look["fog"]) * img
    return img + look["noise"] * rng.standard_normal(img.shape, dtype=np.float32)


def _marker_mask(look: dict, size: int) -> np.ndarray:
    """(S, S) bool: the pixels of the site's side marker, in its corner."""
    letter, corner = look["marker"]
    g = glyph(letter, size)
    m = planted.margin(size)
    col = m if corner == "left" else size - m - g.shape[1]
    out = np.zeros((size, size), bool)
    out[m:m + g.shape[0], col:col + g.shape[1]] = g
    return out


def _quantise(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
