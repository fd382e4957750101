"""Which Jupyter kernel runs the notebook chain.

The kernel must run the interpreter that runs `cmt`: a kernel from another environment would
import another cmtlib (or none) and the report would describe code that did not run. Order:
the `report_kernel` parameter if set; else the `cmtlib` kernel that `make install` registers; else
`python3` (jupyter_client swaps a bare `python` for this interpreter); else any kernel whose python
is this one; else a kernel is registered in this environment (`sys.prefix`) under a name unique to
it, exactly as `make install` would.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from cmtlib.errors import CmtError

PREFERRED = ("cmtlib", "python3")
# jupyter_client replaces these argv[0] values with sys.executable when it starts a kernel.
_BARE_PYTHONS = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}


class KernelError(CmtError, RuntimeError):
    """No usable kernel; the message says how to register one."""


def runs_this_python(argv: list[str]) -> bool:
    """Whether a kernelspec's argv starts this interpreter.

    Compares the folders holding the executables, resolving the folders but not the executable
    itself: a virtual environment's python is a symlink to the base interpreter, so resolving it
    would make every environment look alike.
    """
    if not argv:
        return False
    exe = argv[0]
    if exe in _BARE_PYTHONS:
        return True
    here = Path(sys.executable)
    there = Path(exe)
    if not there.is_absolute():
        return False
    try:
        return there.parent.resolve() == here.parent.resolve() and there.name.startswith("python")
    except OSError:
        return False


def _specs() -> dict[str, list[str]]:
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    out: dict[str, list[str]] = {}
    for name in ksm.find_kernel_specs():
        try:
            out[name] = list(ksm.get_kernel_spec(name).argv)
        except Exception as err:  # noqa: BLE001 -- a broken kernelspec elsewhere must not stop the report
            print(f"cmt report: ignoring kernel {name!r}: {err}", file=sys.stderr)
    return out


def own_kernel_name() -> str:
    """A kernel name unique to this environment (two venvs never share one)."""
    return "cmtlib-" + hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]


def select_kernel(requested: str = "") -> str:
    """Name of a kernel that runs this interpreter (see the module docstring for the order)."""
    specs = _specs()
    if requested:
        if requested not in specs:
            raise KernelError(f"report_kernel={requested!r} is not a Jupyter kernel here; available: {', '.join(sorted(specs)) or 'none'}. "
                              f"Register this environment with: {sys.executable} -m ipykernel install --prefix {sys.prefix} --name cmtlib")
        return requested
    for name in (*PREFERRED, *sorted(specs)):
        if name in specs and runs_this_python(specs[name]):
            return name
    return _register()


def _register() -> str:
    name = own_kernel_name()
    try:
        from ipykernel.kernelspec import install
    except ImportError as err:
        raise KernelError(f"ipykernel is not installed in {sys.prefix}; run: {sys.executable} -m pip install ipykernel") from err
    try:
        install(prefix=sys.prefix, kernel_name=name, display_name=f"cmtlib ({Path(sys.prefix).name})")
    except OSError as err:
        raise KernelError(f"no Jupyter kernel runs {sys.executable} and registering one in {sys.prefix} failed ({err}); "
                          f"run: {sys.executable} -m ipykernel install --user --name cmtlib, then set report_kernel: cmtlib") from err
    print(f"cmt report: registered Jupyter kernel {name!r} for {sys.executable}")
    return name
