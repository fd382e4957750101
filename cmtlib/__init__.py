"""cmtlib: reference open implementation of CMTNet (Malhotra et al., arXiv 2008.03205).

`import cmtlib` and the model, loss, engine and metrics need only torch, torchvision, numpy and
pandas; the report and explain parts import their extra packages where they are used.
"""

__version__ = "0.1.0"
