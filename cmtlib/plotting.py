"""The project's figure style, shared by the explanation plots and the report pages: large readable
fonts, no chart junk, and the Okabe-Ito palette, which stays distinguishable for the common
colour-vision deficiencies. Figures are built with the object API (`matplotlib.figure.Figure`), never
pyplot, so nothing leaks between notebook cells. matplotlib is imported only inside the functions:
this module is imported by code that must run where matplotlib is not installed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
    "sky": "#56B4E9", "purple": "#CC79A7", "yellow": "#F0E442", "black": "#000000", "grey": "#999999",
}
PALETTE = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "sky", "purple", "yellow", "black")]
SPLIT_COLOURS = {"train": OKABE_ITO["blue"], "val": OKABE_ITO["orange"], "test": OKABE_ITO["green"]}
CLASS_COLOURS = {"COVID-19": OKABE_ITO["vermillion"], "healthy": OKABE_ITO["green"], "other disease": OKABE_ITO["blue"], "(unknown)": OKABE_ITO["grey"]}
LUNG_COLOUR = OKABE_ITO["sky"]
DISEASE_COLOUR = OKABE_ITO["vermillion"]
PHASE_STYLE = {"train": {"color": OKABE_ITO["blue"], "linestyle": "-", "marker": "o"},
               "val": {"color": OKABE_ITO["orange"], "linestyle": "--", "marker": "s"}}

STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3,
}


@contextlib.contextmanager
def style(dpi: int = 110) -> Iterator[None]:
    """The report's matplotlib style (fonts, palette, resolution) for the block."""
    import matplotlib as mpl
    from cycler import cycler

    rc = {**STYLE, "axes.prop_cycle": cycler(color=PALETTE), "figure.dpi": dpi, "savefig.dpi": dpi}
    with mpl.rc_context(rc):
        yield


def styled(fn):
    """Run a figure function inside `style(dpi)` so every title, tick and line gets the style."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style(kwargs.get("dpi", 110)):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.0, dpi: int = 110, **kw):
    """(Figure, 2-D array of Axes) sized width x height inches per panel, in the report style."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=dpi, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def fit_title(text: str, width: int = 26) -> str:
    """Each line of a panel title cut to `width` characters, middle elided ("ieee8023:1-s2.0…gr3_lrg"):
    long image ids would run into the next panel's title."""
    def fit(line: str) -> str:
        if len(line) <= width:
            return line
        head = (width - 1) // 2
        return line[:head] + "\u2026" + line[len(line) - (width - 1 - head):]
    return "\n".join(fit(line) for line in str(text).split("\n"))
