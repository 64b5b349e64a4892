"""The ``gpuflat`` command: argparse, logging, printing and progress over the library.
Imported by nothing but the console entry point and ``python -m gpuflat``.

Exit codes: 0 every group written (or already there) or refused with its reason (too few
frames: a warning), and at least one master written or there; 1 some group failed (the
others are still written), or every group was refused (no master at all); 2 usage errors
(a group key the flats lack, two groups of one product name, an output folder that takes
no files...) and inputs that do not exist; 141 the reader of the output went away; an
interrupt, 128 + the signal's number as a shell reports it: 130 SIGINT (Ctrl-C), 143
SIGTERM, 129 SIGHUP. All three stop a run the same way: the product being written is
finished, the one being combined is dropped (no temporary file stays), the products
finished are listed and the report (with ``--report``) is written, marked
``"complete": false, "interrupted": true`` with the signal's name. A second signal while
that is done is ignored (it takes at most one product's write); a signal that the process
was started ignoring (``nohup``'s SIGHUP) stays ignored.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading

from . import farm
from ._cli_parser import build_parser
from ._version import __version__
from .errors import GpuflatError
from .farm import OptionError, tools

log = logging.getLogger("gpuflat")


def console() -> None:
    """The process entry point (the ``gpuflat`` script, ``python -m gpuflat``): ``main``,
    then exit with its code.

    The imported modules, and numba's loaded code, are long-lived heaps of many small
    objects. ``gc.freeze`` exempts those imported so far from the collector's full passes
    during the run (whatever the run makes is still collected as usual). At the end,
    every product is written and every file closed: the exit handlers run (logging's
    flush, thread pools' joins...) and the process leaves without tearing those heaps down
    object by object, which took 0.2 s of a 1 s run (0.04 s with the collector frozen)."""
    gc.freeze()
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (| head)
            stream.flush()
    os._exit(code)


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = args.command
    if command == "run":
        _return_freed_frames()
    if command in ("run", "inspect", "mask"):
        _skip_blas_probe()
    with _signals() as caught:
        return _command(args, argv, caught)


def _command(args, argv, caught) -> int:
    command, opts = args.command, None
    try:
        if command in ("run", "inspect"):
            skip = ("command", "config", "all")  # inspect's --all is not a run option
            flags = {k: v for k, v in vars(args).items() if k not in skip}
            opts = farm.build_options(flags, getattr(args, "config", None))
            _setup_logging(opts.verbose, opts.quiet)
            if command == "run":
                return _run(opts, ["gpuflat", *argv])
            return _inspect(opts, getattr(args, "all", False))
        _setup_logging(args.verbose, args.quiet)
        if command in ("warmup", "mask"):  # gpuflat mask: the batch job in farm/mask.py
            return _warmup(args.quiet) if command == "warmup" else farm.mask.main(args)
        if command in ("simulate", "compare"):  # their logic in farm.tools
            verb = tools.simulate if command == "simulate" else tools.compare
            for line in verb(args):
                print(line)
            return 0
        return _info()
    except OptionError as exc:
        print(f"gpuflat {command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the output went away (| head): stop quietly
        with contextlib.suppress(OSError, ValueError):  # nothing more reaches it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process that SIGPIPE ended
    except (GpuflatError, ValueError, TypeError, OSError) as exc:
        print(f"gpuflat {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        name = caught[0] if caught else "SIGINT"
        _say_interrupted(name, getattr(exc, "outcome", None), opts and opts.report)
        return 128 + signal.Signals[name].value


_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _signals():
    """SIGINT, SIGTERM and SIGHUP raise ``farm.Interrupted`` in the main thread (the run
    then stops as the module's docstring says); the first one only: later ones are noted
    and ignored while the run cleans up. Yields the names of those caught. Signals the
    process ignores stay ignored; the previous handlers come back on exit. Elsewhere than
    in the main thread (where Python takes no handler) nothing changes."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        caught.append(signal.Signals(signum).name)
        if len(caught) == 1:
            raise farm.Interrupted(caught[0])

    previous = {}
    for name in _SIGNALS:
        number = getattr(signal, name, None)
        if number is None or signal.getsignal(number) == signal.SIG_IGN:
            continue
        previous[number] = signal.signal(number, handler)
    try:
        yield caught
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _say_interrupted(name, outcome, report) -> None:
    """The last words of an interrupted command (on stderr, which may be gone): what was
    finished (each product written was listed as it was), where the report is."""
    text = f"gpuflat: interrupted ({name})"
    if outcome is not None:
        entries = outcome.report["groups"]
        written = sum(e["status"] == "written" for e in entries)
        skipped = sum(e["status"].startswith("skipped") for e in entries)
        text += f" after {len(entries)} of {outcome.report['planned']} group(s): {written} written"
        text += f", {skipped} already there" if skipped else ""
        text += f"; report: {report} (incomplete)" if report else ""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


def _return_freed_frames():
    """Let the C allocator hand every freed buffer of 1 MB or more back to the system, and
    keep the smaller ones.

    glibc raises its mmap threshold each time such a buffer is freed (up to 32 MB), so
    after the first group a run's frame-sized arrays (16 MB for 2048^2 float32) come from
    the heap, which fragments and keeps growing from group to group; a fixed threshold
    keeps a night's peak at one group's (518 instead of 550-580 MB for 6 x 12 x 2048^2).
    Fixing it also fixes the trim threshold at 128 kB, and then every freed temporary of a
    few hundred kB is handed back and faulted in again at once (and the page-table changes
    interrupt the other cores' kernels): a 32 MB trim threshold keeps them (the pass over
    20 x 4096^2 frames takes half the time). The command owns its process, so it may; the
    library leaves the allocator alone. Elsewhere than glibc this does nothing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(1 << 20))  # M_MMAP_THRESHOLD
        libc.mallopt(ctypes.c_int(-1), ctypes.c_int(32 << 20))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _skip_blas_probe():
    """Spare the command numba's probe for SciPy's BLAS (0.1 s of start-up).

    When numba's CPU target starts, its ``numba.np.arraymath`` imports ``scipy.linalg``
    (when SciPy is installed) to learn whether ``np.correlate`` in jitted code may call
    BLAS; that import costs about 0.1 s (it brings ``numpy.f2py`` too) and gpuflat's
    kernels call no BLAS. So that module is loaded here while ``scipy.linalg`` cannot be
    imported: the probe finds no BLAS and numba's ``np.correlate`` would use its own loop.
    Afterwards ``scipy.linalg`` imports as usual. The command owns its process, so it may;
    where ``scipy.linalg`` is loaded already, or numba differs, this changes nothing."""
    if "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg"] = None  # its import raises ImportError meanwhile
    try:
        import numba.np.arraymath  # noqa: F401
    except Exception:  # never worse than no shortcut: numba imports it later as usual
        pass
    finally:
        if sys.modules.get("scipy.linalg", 0) is None:
            del sys.modules["scipy.linalg"]


def _setup_logging(verbose, quiet):
    level = (
        logging.ERROR
        if quiet
        else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose or 0, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gpuflat: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class _Printer:
    """What the user sees of a run: a progress bar per group on a terminal, a line per
    product written."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars = {}

    def __call__(self, kind, data):
        if kind == "progress":
            self._progress(data)
        elif kind == "compiling":
            if not self.quiet:
                print(_compiling_line(data), file=sys.stderr, flush=True)
        elif kind == "done":
            bar = self.bars.pop(data["group"], None)
            if bar is not None:
                bar.close()
            self._announce(data)

    def _progress(self, data):
        if self.quiet or not sys.stderr.isatty():
            return
        bar = self.bars.get(data["group"])
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=None, desc=f"{data['group']:>10}", unit="band", leave=False,
                file=sys.stderr,
            )  # fmt: skip
            self.bars[data["group"]] = bar
        bar.total, bar.n = data["total"], data["done"]
        bar.refresh()

    def _announce(self, entry):
        status = entry["status"]
        if status == "written":
            if not self.quiet:
                total = len(entry["files"])
                combined = entry.get("frames_combined", total)
                frames = f"{combined} of {total}" if combined != total else f"{total}"
                print(f"{entry['product']}  ({frames} frames, group {entry['group']})")
        elif status.startswith("skipped"):
            log.warning("%s: exists, skipped (use --overwrite to replace it)", entry["product"])
        elif status.startswith("refused"):
            log.warning("group %s %s", entry["group"], status)
        else:
            log.error("group %s %s", entry["group"], status)


def _run(opts, command) -> int:
    outcome = farm.run(opts, _Printer(opts.quiet), command=command)
    if not opts.quiet:
        print(outcome.summary())
    if outcome.refused and not outcome.masters:
        log.error("no master written: every group was refused")
        return 1
    return 1 if outcome.failed else 0


def _inspect(opts, show_all) -> int:
    found = farm.select(opts, strict=False)
    selected = [f for g in found.groups for f in g.frames]
    left_out = {id(info): f"no {' or '.join(lacks)}" for info, lacks in found.left_out}
    keys = [opts.imagetyp_key, *dict.fromkeys((*opts.group_keys, "EXPTIME"))]
    rows = []
    extra = [i for i, _ in found.left_out]
    if show_all:
        extra += found.others + found.products
    for info in selected + extra:
        level = farm.median_level(info.path)
        flat = "yes" if info in selected else left_out.get(id(info), "no")
        rows.append(
            (
                str(info.path),
                *(str(info.get(k)) for k in keys),
                f"{info.shape[0]}x{info.shape[1]}"
                + (f" x{len(info.extensions)} ext" if info.extensions else ""),
                "unreadable" if level is None else f"{level:.6g}",
                "no (a combined master)" if info in found.products else flat,
            )
        )
    header = ("file", *keys, "shape", "median", "flat")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{len(found.paths)} file(s), {len(selected)} flat(s) selected, "
        f"{len(found.groups)} group(s):"
    )
    for g in found.groups:
        refused = len(g.frames) < opts.min_frames
        print(
            f"  {g.label():<20} {len(g.frames):3d} frames  "
            f"{g.shape[0]}x{g.shape[1]}  -> {g.product_name()}"
            + (f"  (refused: fewer than --min-frames {opts.min_frames})" if refused else "")
        )
        if g.mosaic:
            exts = farm.extension_list(g, opts.ext_specs)
            print("      extensions: " + ", ".join(f"{k} {s[0]}x{s[1]}" for k, s in exts))
    if found.products:
        print(f"  {len(found.products)} combined master(s) (COMBINED = T): never used as flats")
    for p, why in found.unreadable:
        print(f"  unreadable: {p}: {why}")
    for info in (f for g in found.groups for f in g.frames if f.broken):
        print(f"  unreadable: {info.path}: {info.broken}")
    for problem in found.problems:
        print(f"  run would refuse: {problem}")
    if found.problems:
        return 2
    return 1 if found.unreadable else 0


def _compiling_line(data) -> str:
    return (
        f"gpuflat: compiling {data['what']} for this machine, once (numba's cache does not "
        f"have them yet: a first run here, a new CPU model or a new version); about "
        f"{data['seconds']} s on 2 cores. Cache: {data['cache']}. 'gpuflat warmup' compiles "
        "every kernel ahead."
    )


def _info() -> int:
    import numba
    import numpy as np

    from .backends import _compile, cuda_status

    print(f"gpuflat {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}")
    print(f"cpu backend: available (numba, {numba.config.NUMBA_NUM_THREADS} threads)")
    state = _compile.cache_state()
    total = len(state["cached"]) + len(state["missing"])
    warmth = "warm" if not state["missing"] else "cold" if not state["cached"] else "partly warm"
    print(
        f"  compiled kernels: {warmth} for this CPU ({state['cpu']}): {len(state['cached'])} "
        f"of {total} entry points cached"
        + ("" if not state["missing"] else "; 'gpuflat warmup' compiles the rest")
    )
    print(f"  numba cache: {state['dir']} (NUMBA_CACHE_DIR moves it)")
    ok, why = cuda_status()
    if ok:
        from .backends._cuda import device_info  # pragma: no cover - needs a GPU

        print(f"cuda backend: available ({device_info()})")
    else:
        print(f"cuda backend: not available ({why})")
    return 0


def _warmup(quiet) -> int:
    import time

    from tqdm import tqdm

    from .farm.warmup import steps, warmup

    t0 = time.perf_counter()
    with tqdm(total=len(steps()), desc="gpuflat warmup", unit="step", disable=quiet,
              file=sys.stderr) as bar:  # fmt: skip
        notes = warmup(lambda done, total, label: (bar.set_postfix_str(label), bar.update()))
    if not quiet:
        for note in notes:
            print(f"gpuflat warmup: {note}", file=sys.stderr)
        print(f"gpuflat warmup: done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
