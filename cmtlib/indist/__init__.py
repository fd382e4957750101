"""Is a film like the films a run was trained on? The in-distribution check of `cmt predict` and
`cmt evaluate` (docs/CONTRACTS.md, "The in-distribution check").

A classifier answers every input; a screening tool must say when an input is outside what it has
seen (a photo, a document, a mask, a negative, a rotated or lateral film, a thumbnail). Each film is
described by what every model already returns, in the same pass (`Descriptors`, an `infer` hook):

    features    the embedding (the model contract's `embedding`): how the network itself sees the film
    lungs       the lung probability map averaged over an 8 x 8 grid (models with a lung output):
                whether there are lungs, where, how large, how many, how sure the outline is
    appearance  the film as the network receives it: brightness quantiles, edge strength across and
                along at one and two pixels, and where bright and dark lie on a 4 x 4 grid: negatives,
                blank or washed-out images, noise, blur, films upside down or turned
    orientation the appearance's distance as the film is, over its distance turned by a quarter, a
                half or three quarters of a turn (computed from the descriptor, no pass): above 1 when a
                turned film is closer to the training films than the film as given
    size        the file's shorter side: under half the smallest training film's, too little of the
                film is left to judge (a 16-px thumbnail)

The distances are Mahalanobis distances to the training films (each feature standardised, the
covariance shrunk by Ledoit and Wolf's rule, which needs no tuning and keeps the distance stable when
features outnumber films). Measured on the default run, the embedding alone misses bright images (a
white page, a document) and blurred films, the lung map alone misses some blurred films, the
appearance without its 4 x 4 layout misses films turned upside down, which a barely trained network's
lung map and embedding miss too (the smoke run); on the real-data run (varied films, a weakly trained
network) only the orientation catches every turned film. The embedding's Mahalanobis distance beat
the k-nearest-neighbour distance. Together they flag every kind tried (benchmarks/RESULTS.md).

Recorded once at training (`fit`, the engine's last step, with the best checkpoint): the distances'
parameters from one pass over the training films; the thresholds from the validation films, which the
network never fitted (its training films sit closer to their own statistics than any new film does).
Each distance is divided by its own (1 - SHARE) quantile on the validation films; a film's score is
the largest of these ratios; the score's threshold is set on the validation films' scores so that a new
film like them is flagged with probability at most SHARE (1 %; `conformal_threshold`); each signal's
threshold is that threshold times its quantile, so a film is flagged when any signal is over its own
threshold, and the reasons name those signals in words. Stored through `Run.write_indist`.

Layout: `describe` (what is read, in the pass), `distance` (the statistics), `check` (the reference,
the verdicts and their words). Only torch and numpy: a bare GPU machine trains and predicts with it.
"""

from cmtlib.indist.check import (
    FIT_FILMS,
    MIN_SIDE_SHARE,
    SHARE,
    SIGNALS,
    VERDICT_IN,
    VERDICT_NA,
    VERDICT_OUT,
    WORDS,
    Reference,
    Verdicts,
    distances,
    fit,
    judge,
    shorter_sides,
    spread_rows,
    unavailable,
)
from cmtlib.indist.describe import (
    GRID,
    LAYOUT,
    QUANTILES,
    Descriptors,
    describe,
    turned,
)
from cmtlib.indist.distance import Gaussian, conformal_threshold, ledoit_wolf

__all__ = ["FIT_FILMS", "GRID", "LAYOUT", "MIN_SIDE_SHARE", "QUANTILES", "SHARE", "SIGNALS", "VERDICT_IN", "VERDICT_NA", "VERDICT_OUT",
           "WORDS", "Descriptors", "Gaussian", "Reference", "Verdicts", "conformal_threshold", "describe", "distances", "fit", "judge",
           "ledoit_wolf", "shorter_sides", "spread_rows", "turned", "unavailable"]
