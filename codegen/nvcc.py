"""CUDA source -> cubin with nvcc, keeping ptxas's resource report (registers, spills, smem)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class NvccError(RuntimeError):
    pass


@dataclass(frozen=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    static_smem: int
    report: str  # ptxas's own lines
    # Variant choices the compiler made because an earlier choice spilled (resources.txt)
    choices: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**self.__dict__, "choices": list(self.choices)}


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1]


def compile_cubin(
    source: str, arch: str, kernel: str, nvcc: str | None = None, extra: list[str] | None = None
) -> tuple[bytes, Resources, str]:
    """Returns (cubin, resources, warnings). Raises NvccError with nvcc's output on failure.
    `extra`: more nvcc flags (include folders, defines)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise NvccError("nvcc not found: install the CUDA toolkit or put nvcc on PATH")
    cc = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "kernel.cu", Path(d) / "kernel.cubin"
        src.write_text(source)
        cmd = [
            nvcc,
            "-cubin",
            f"-gencode=arch=compute_{cc},code=sm_{cc}",
            "-O3",
            "-std=c++17",
            "-Xptxas",
            "-v",
            "-Xptxas",
            "-warn-spills",
            "-lineinfo",
            *(extra or []),
            "-o",
            str(out),
            str(src),
        ]
        # nvcc's own temporaries (tmpxft_*) in the same folder: gone with it, even when
        # nvcc is killed
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": d})
        log = r.stdout + r.stderr
        if r.returncode != 0:
            raise NvccError(f"nvcc failed ({' '.join(cmd)}):\n{log}")
        cubin = out.read_bytes()
    return cubin, _parse_resources(log, kernel), _warnings(log)


def _warnings(log: str) -> str:
    return "\n".join(
        line for line in log.splitlines() if "warning" in line.lower() and "ptxas info" not in line
    )


def _parse_resources(log: str, kernel: str) -> Resources:
    lines = [line for line in log.splitlines() if "ptxas" in line]
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    smem = re.search(r"(\d+) bytes smem", log)
    return Resources(
        registers=int(regs.group(1)) if regs else -1,
        spill_stores=int(spill.group(1)) if spill else 0,
        spill_loads=int(spill.group(2)) if spill else 0,
        stack_frame=int(stack.group(1)) if stack else 0,
        static_smem=int(smem.group(1)) if smem else 0,
        report="\n".join(lines),
    )
