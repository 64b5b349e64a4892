"""What nvcc makes of the combine kernels, without a GPU: per kernel, ptxas' registers,
stack frame and spills, the SASS instructions in all, and for the fast kernels the SASS
instructions along the common path (one warp instruction serves 32 pixels, so this is the
warp instructions per 32 pixels).

    python bench/kernel_stats.py                    # every fast kernel and combine.cu's
    python bench/kernel_stats.py --n 15 40 --check  # fails unless the targets are met
    python bench/kernel_stats.py --json out.json

The common path is the guide's case: no mask, no weights, no min/max, the average, a pixel
that is eligible and clips nothing. It is traced through the machine code (sm_90 by
default, built with the prebuilt kernels' options plus ``-lineinfo``): from the first
instruction, a conditional branch goes to the side whose first instruction is not on a
source line of a ``// gf-rare`` ... ``// gf-rare-end`` region of kernels/fast.cu (inlined
code counts by every line of its inlining chain); where neither or both are, it skips a
block that calls a slow-path subroutine (IEEE division and square root), else falls
through. Every instruction on the way is counted, up to the EXIT.

Targets (issue 25): every fast kernel 0 bytes of stack and no spills; the common path at
most 800 instructions at n = 15 and 2,800 at n = 40. cuobjdump/nvdisasm come from the
``test`` extra's wheels (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) or a toolkit; nvcc
from PATH or ``--nvcc``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gpuflat.backends._kernels import FATBIN_OPTIONS  # noqa: E402

TARGETS = {15: 800, 40: 2800}  # common-path instructions at most
_PTXAS = re.compile(
    r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?"
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
    r"Used (\d+) registers",
    re.S,
)
_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LINE = re.compile(r'"([^"]+)", line (\d+)')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def nvdisasm():
    from nvrtc_harness import tool

    return tool("nvdisasm")


def build(source: str, arch: str, nvcc: str, tmp: Path, kernels=None) -> tuple[dict, Path]:
    """Compile kernels/<source> to a cubin for ``arch``; ({kernel: (registers, stack,
    spill stores, spill loads)}, cubin). ``kernels``: only these (GPUFLAT_ONLY guards)."""
    options = [o for o in FATBIN_OPTIONS if not o.startswith("--compress")]
    defines = []
    if kernels:
        defines = ["-DGPUFLAT_ONLY", *(f"-DGPUFLAT_ONLY_{k}" for k in kernels)]
    cubin = tmp / f"{source}.{arch}.{abs(hash(tuple(kernels or ())))}.cubin"
    cmd = [nvcc, "-cubin", f"-arch={arch}", *options, "-lineinfo", "-Xptxas", "-v",
           *defines, str(ROOT / "kernels" / source), "-o", str(cubin)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    found = {
        m[1]: (int(m[6]), int(m[3]), int(m[4]), int(m[5]))
        for m in _PTXAS.finditer(res.stdout + res.stderr)
    }
    return found, cubin


def rare_lines(source: str) -> set[int]:
    """The source lines inside ``// gf-rare`` ... ``// gf-rare-end`` regions."""
    rare, inside = set(), False
    for number, line in enumerate((ROOT / "kernels" / source).read_text().splitlines(), 1):
        if "// gf-rare-end" in line:
            inside = False
            rare.add(number)
        elif "// gf-rare" in line:
            inside = True
        if inside:
            rare.add(number)
    return rare


def functions(cubin: Path, source: str) -> dict:
    """{kernel: (instructions [(text, lines)], {label: index})} from ``nvdisasm -gi``:
    each instruction with the lines of ``source`` in its inlining chain; a kernel's listing
    ends where its slow-path subroutines begin."""
    res = subprocess.run([str(nvdisasm()), "-gi", str(cubin)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    out, name, code, labels, lines, chained = {}, None, [], {}, (), False
    for raw in res.stdout.splitlines():
        m = re.match(r"^\s*\.text\.(\w+):", raw)
        if m:
            name, code, labels, lines = m[1], [], {}, ()
            out[name] = (code, labels)
            continue
        if name is None:
            continue
        if "$__internal" in raw and ".type" in raw:  # the subroutines follow
            name = None
            continue
        if raw.lstrip().startswith("//##"):  # one line per level of inlining
            found = tuple(int(ln) for f, ln in _LINE.findall(raw) if Path(f).name == source)
            lines = (lines if chained else ()) + found
            chained = True
            continue
        chained = False
        m = _LABEL.match(raw)
        if m:
            labels[m[1]] = len(code)
            continue
        m = _INSTR.match(raw)
        if m:
            code.append((m[2], lines))
    return out


def common_path(code, labels, rare: set[int]) -> int:
    """Instructions along the common path (see the module docstring)."""

    def is_rare(i):
        return i < len(code) and any(x in rare for x in code[i][1])

    def calls_soon(i):
        for text, _ in code[i : i + 64]:
            if "CALL" in text:
                return True
            if "BRA" in text or "EXIT" in text or "BSYNC" in text:
                return False
        return False

    i, count, seen = 0, 0, set()
    while i < len(code):
        if i in seen:
            raise RuntimeError(f"the common path loops at instruction {i}: {code[i][0]}")
        seen.add(i)
        text = code[i][0]
        count += 1
        predicated = text.startswith("@")
        op = text.split()[1] if predicated else text.split()[0]
        if op == "EXIT":
            if not predicated or is_rare(i + 1):
                return count
        elif op.startswith("BRA"):
            target = labels[_TARGET.search(text)[1]]
            if not predicated:
                i = target
                continue
            if is_rare(i + 1) != is_rare(target):
                i = target if is_rare(i + 1) else i + 1
            else:
                i = target if calls_soon(i + 1) else i + 1
            continue
        i += 1
    return count


def stats(ns, arch, nvcc, general=True) -> dict:
    """{kernel: {registers, stack, spill_stores, spill_loads, sass, common_path}}."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="gpuflat-stats-") as tmp:
        names = [f"gpuflat_fast_{n}" for n in ns] + ["gpuflat_fast_clip"]
        # fast.cu in two halves, built at the same time (two cores), then combine.cu
        jobs = [("fast.cu", names[0::2]), ("fast.cu", names[1::2])]
        if general:
            jobs.append(("combine.cu", None))
        with ThreadPoolExecutor(2) as pool:
            built = list(pool.map(lambda j: build(*j[:1], arch, nvcc, Path(tmp), j[1]), jobs))
        for (source, _), (res, cubin) in zip(jobs, built, strict=True):
            code = functions(cubin, source)
            rare = rare_lines(source)
            for name, (regs, stack, st, ld) in sorted(res.items(), key=_order):
                instrs, labels = code[name]
                row = {"registers": regs, "stack": stack, "spill_stores": st,
                       "spill_loads": ld, "sass": len(instrs), "common_path": None}  # fmt: skip
                if name[len("gpuflat_fast_") :].isdigit():
                    row["common_path"] = common_path(instrs, labels, rare)
                out[name] = row
    return dict(sorted(out.items(), key=_order))


def _order(item):
    name = item[0]
    tail = name.rsplit("_", 1)[1]
    return (name.rsplit("_", 1)[0], int(tail) if tail.isdigit() else 1 << 20, tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=list(range(1, 49)),
                    help="the fast kernels' stack sizes (default 1 to 48)")  # fmt: skip
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/bin/nvcc")
    ap.add_argument("--no-general", action="store_true", help="leave out combine.cu")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the targets are met")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    if nvdisasm() is None:
        print("nvdisasm not found: pip install nvidia-cuda-nvdisasm", file=sys.stderr)
        return 2
    table = stats(args.n, args.arch, args.nvcc, general=not args.no_general)
    print(f"{'kernel':22} {'regs':>5} {'stack':>6} {'spills':>7} {'SASS':>6} {'common':>7}")
    for name, r in table.items():
        spills = r["spill_stores"] + r["spill_loads"]
        common = "" if r["common_path"] is None else r["common_path"]
        print(f"{name:22} {r['registers']:5} {r['stack']:6} {spills:7} {r['sass']:6} "
              f"{common!s:>7}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "kernels": table}, indent=1))
    failed = []
    for name, r in table.items():
        if name.startswith("gpuflat_fast_") and (r["stack"] or r["spill_stores"]
                                                 or r["spill_loads"]):  # fmt: skip
            failed.append(f"{name}: {r['stack']} bytes of stack, spills")
    for n, limit in TARGETS.items():
        r = table.get(f"gpuflat_fast_{n}")
        if r is not None and r["common_path"] > limit:
            failed.append(f"gpuflat_fast_{n}: {r['common_path']} instructions > {limit}")
    for line in failed:
        print("FAILED", line)
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
