"""Run the C core on an emulated CPU with AVX-512 and AVX512_BF16.

The kernels pick their ISA at run time, so on a machine without AVX-512 (or without
AVX512_BF16) the ``vdpbf16ps`` and AVX-512 code never runs natively. This module builds
``csrc/tests/emu_job.c`` with the whole C core into a freestanding x86-64 program and runs
it on Bochs' CPU emulator (PyPI ``bochscpu-python``) configured as a Sapphire Rapids Xeon,
whose CPUID reports AVX-512 F/BW/VL and AVX512_BF16 and which executes ``vdpbf16ps`` as
Intel specifies it (products and sums rounded to nearest even, denormals flushed).

``Emulator.bsmm(...)`` runs one block-sparse matmul there and returns its output array;
``Emulator.probe(...)`` one peak probe. ``unavailable()`` says why it cannot run here
(no gcc, no bochscpu), or ``None``.
"""
import ctypes
import functools
import gc
import glob
import hashlib
import mmap
import os
import shutil
import struct
import subprocess
import sysconfig
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096

# Slots of the job block, in the order of the enum in csrc/tests/emu_job.c.
SLOTS = """KIND OP DTYPE T R C B1 B2 NNZ ISA PAIRS TASKS RANK LDX LDY LDO LDLR ITERS
ROW_PTR COL_IDX COL_PTR ROW_IDX CSC_BLK X W DY OUT LR_A LR_B BIAS WORK WORK_BYTES ERR ERR_BYTES
BATCH HEADS L D BLOCK SCALE CAUSAL PER_PROBLEM Q K V DOUT LSE DLSE DQ DK DV FEATURES KEY_MASK
STATUS HAS_AVX512 HAS_BF16 PICKED PAIRS_NATIVE RESULT SINK WORK_NEED""".split()
J = {name: i for i, name in enumerate(SLOTS)}
OPERANDS = ("ROW_PTR", "COL_IDX", "COL_PTR", "ROW_IDX", "CSC_BLK", "X", "W", "DY", "OUT", "LR_A", "LR_B",
            "BIAS", "Q", "K", "V", "DOUT", "LSE", "DLSE", "DQ", "DK", "DV", "FEATURES", "KEY_MASK")

ISA = {"portable": 1, "avx2": 2, "avx512": 3, "avx512bf16": 4}
NP_DTYPE = {"float32": np.float32, "bfloat16": np.uint16, "float64": np.float64}
DTYPE = {"float32": 0, "bfloat16": 1, "float64": 3}
OP = {"fwd": 0, "bwd_x": 1, "bwd_w": 2}

CODE_BASE = 0x400000
STACK_BASE, STACK_BYTES = 0x10000000, 1 << 20
JOB_BASE, JOB_BYTES = 0x20000000, 96 << 20
PAGE_TABLES = 0x70000000  # guest-physical home of the page tables
SAPPHIRE_RAPIDS = 30  # Bochs' CPU model table (cpu/cpudb.h): ..., 29 tigerlake, 30 sapphire_rapids

# bochscpu-python 0.4.0 is built against glibc 2.38 but asks only these two C23 names of it.
_SHIM = r"""
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
unsigned long long __isoc23_strtoull(const char *s, char **e, int b) { return strtoull(s, e, b); }
int __isoc23_sscanf(const char *s, const char *f, ...) {
    va_list ap; va_start(ap, f); int r = vsscanf(s, f, ap); va_end(ap); return r;
}
"""


def _cache_dir():
    d = os.path.join(tempfile.gettempdir(), f"pixelfly-emu-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def _compile(out_name, sources, args, text=None, libs=(), headers=()):
    """gcc, cached by the content of the sources, the headers they include and the arguments."""
    h = hashlib.sha256(" ".join([*args, *libs]).encode())
    for s in [*sources, *headers]:
        with open(s, "rb") as f:
            h.update(f.read())
    if text:
        h.update(text.encode())
    out = os.path.join(_cache_dir(), f"{h.hexdigest()[:16]}-{out_name}")
    if not os.path.exists(out):
        srcs = list(sources)
        if text:
            srcs.append(os.path.join(_cache_dir(), out_name + ".c"))
            with open(srcs[-1], "w") as f:
                f.write(text)
        tmp = out + f".{os.getpid()}"
        r = subprocess.run(["gcc", *args, *srcs, *libs, "-o", tmp], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"gcc could not build {out_name}:\n{r.stderr[-4000:]}")
        os.replace(tmp, out)
    return out


def _core_sources():
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "core", "*.c")) +
                  glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.c")))


def build_program(sanitize=True):
    """The freestanding ELF: csrc/tests/emu_job.c and the core with setup.py's C flags, plus
    (`sanitize`) UBSan in trap mode: undefined behaviour stops the emulator with #UD, no
    runtime needed. Without it the program runs the instructions the library runs (for
    instruction profiles)."""
    flags = ["-O3", "-std=c11", "-fno-math-errno", "-nostdlib", "-static",
             "-fno-pic", "-no-pie", "-fno-stack-protector", "-fcf-protection=none",
             "-I" + os.path.join(ROOT, "csrc", "include")]
    if sanitize:
        flags += ["-fsanitize=undefined", "-fsanitize-undefined-trap-on-error"]
    return _compile("emu_job.elf", [os.path.join(ROOT, "csrc", "tests", "emu_job.c")] + _core_sources(),
                    flags, libs=["-lgcc"], headers=sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*.h"))))


@functools.lru_cache(maxsize=None)
def _bochscpu():
    """Import bochscpu (with the glibc shim where this glibc predates 2.38) and select the
    Sapphire Rapids model before any CPU exists; returns the module."""
    import importlib.util
    spec = importlib.util.find_spec("bochscpu")
    if spec is None:
        raise ImportError("bochscpu-python is not installed (pip install bochscpu-python==0.4.0)")
    so = glob.glob(os.path.join(os.path.dirname(spec.origin), "_bochscpu*.so"))[0]
    shim = _compile("libisoc23.so", [], ["-O2", "-shared", "-fPIC"], text=_SHIM)
    ctypes.CDLL(shim, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(so, mode=ctypes.RTLD_GLOBAL)
    lib.sim_get_param_enum.restype = ctypes.c_void_p
    lib.sim_get_param_enum.argtypes = [ctypes.c_char_p]
    get64 = lib._ZN14bx_param_num_c5get64Ev
    get64.restype, get64.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    model = lib.sim_get_param_enum(b"cpu.model")
    # The wheel's model list stops before sapphire_rapids; Bochs indexes its own table with
    # the value, so widen the range (bx_param_num_c: max at +0x78) and set it (value at +0x88).
    ctypes.c_int64.from_address(model + 0x78).value = SAPPHIRE_RAPIDS
    ctypes.c_int64.from_address(model + 0x88).value = SAPPHIRE_RAPIDS
    if get64(model) != SAPPHIRE_RAPIDS:
        raise RuntimeError("could not select Bochs' sapphire_rapids model in this bochscpu build")
    import bochscpu
    import bochscpu.cpu
    import bochscpu.memory
    return bochscpu


def unavailable():
    """Why the emulator cannot run here, or None."""
    if shutil.which("gcc") is None:
        return "no gcc to build the emulated program"
    if sysconfig.get_platform() != "linux-x86_64":
        return f"the emulator runs x86-64 code on linux-x86_64 hosts (this is {sysconfig.get_platform()})"
    try:
        _bochscpu()
    except ImportError as e:
        return str(e)
    return None


def _elf_segments(path):
    """(vaddr, file bytes, memory size) of each PT_LOAD of a 64-bit little-endian ELF."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, path
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segs = []
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((vaddr, data[off:off + filesz], memsz))
    return entry, segs


class Emulator:
    """One emulated CPU: guest memory identity-mapped onto host buffers this object keeps
    (the program, a stack, the job block); each job gets a page table of its own."""

    def __init__(self, sanitize=True):
        self.bx = bx = _bochscpu()
        self._ranges, self._buffers = [], []
        self.program = build_program(sanitize)
        self.entry, segs = _elf_segments(self.program)
        lo = min(v for v, _, _ in segs) & ~(PAGE - 1)
        hi = max(v + m for v, _, m in segs)
        code = self._map(lo, hi - lo)
        for vaddr, data, _ in segs:
            code[vaddr - lo:vaddr - lo + len(data)] = data
        self._map(STACK_BASE, STACK_BYTES)
        self._fixed = self._ranges[:]  # the program and the stack, in every page table
        self.block = np.frombuffer(self._map(JOB_BASE, JOB_BYTES), dtype=np.uint8)  # the job block
        self._layout = None
        self.session = bx.Session()
        self.session.missing_page_handler = self._missing
        self.events = []
        self.hook = bx.Hook()
        self.hook.hlt = lambda sess, cpu: (self.events.append("hlt"), sess.stop())
        self.hook.exception = lambda sess, cpu, vector, code: (self.events.append(("exception", int(vector), int(code))), sess.stop())

    def close(self):
        """Drop the emulator's objects (the session first). bochscpu's bindings crash at
        interpreter exit if a session is still alive then, so tests close it."""
        self.session = self.hook = self._layout = None
        gc.collect()

    def _map(self, base, size):
        """Back guest addresses [base, base + size) with one host buffer; its view."""
        size = (size + PAGE - 1) & ~(PAGE - 1)
        buf = mmap.mmap(-1, size)
        hva = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        for off in range(0, size, PAGE):
            self.bx.memory.page_insert(base + off, hva + off)
        self._ranges.append((base, size))
        self._buffers.append(buf)
        return memoryview(buf)

    @staticmethod
    def _missing(gpa):
        raise RuntimeError(f"emulated program touched unmapped memory at {gpa:#x}")

    def _state(self):
        bx = self.bx
        st = bx.State()
        bx.cpu.set_long_mode(st)
        st.cr3 = PAGE_TABLES  # commit() puts the PML4 at the base it is given
        st.cr0 = st.cr0 | 0x2          # MP (EM clear): SSE and x87 enabled
        st.cr4 = st.cr4 | (1 << 9) | (1 << 10) | (1 << 18)  # OSFXSR, OSXMMEXCPT, OSXSAVE
        st.xcr0 = 0xE7                 # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
        st.mxcsr = 0x1F80
        st.rip = self.entry
        st.rsp = STACK_BASE + STACK_BYTES - 64
        st.rdi = JOB_BASE
        st.rflags = 0x2
        cs = bx.Segment()
        cs.present, cs.selector, cs.base, cs.limit, cs.attr = True, 0x08, 0, 0xFFFFFFFF, 0x209B
        ds = bx.Segment()
        ds.present, ds.selector, ds.base, ds.limit, ds.attr = True, 0x10, 0, 0xFFFFFFFF, 0xC93
        st.cs = cs
        st.ds = st.ss = st.es = st.fs = st.gs = ds
        return st

    def _page_table(self, regions):
        """A fresh page table mapping the program, the stack and `regions` [(gva, bytes)]
        of the job block (identity), and nothing else: the unmapped page after every
        region (and before it) turns an access past its end into a page fault."""
        layout = self.bx.memory.PageMapLevel4Table()
        pages = set()
        for base, size in self._fixed + regions:
            pages.update(range(base & ~(PAGE - 1), base + size, PAGE))
        for a in sorted(pages):
            layout.insert(a, a, 1)
        for hva, gpa in layout.commit(PAGE_TABLES):
            self.bx.memory.page_insert(gpa, hva)
        self._layout = layout  # owns the page-table pages until the next job

    def run(self, slots, blobs, outputs, work_bytes=0):
        """Lay out `blobs` (slot name -> numpy array) in the job block, each ending at a
        page whose successor is unmapped, then `outputs` (slot name -> bytes, filled with
        NaN first), the error message and the workspace (`work_bytes`) the same way; set
        `slots`; run the program to its hlt. Returns (slots, {output: bytes}, error text)."""
        job = self.block
        head = len(SLOTS) * 8
        s = np.zeros(len(SLOTS), dtype=np.int64)
        s[[J[name] for name in OPERANDS]] = -1  # NULL unless given
        for name, v in slots.items():
            s[J[name]] = v
        regions, cursor = [(JOB_BASE, head)], PAGE

        def place(nbytes, align):
            """(start, end) offsets of `nbytes` ending at a page end (start rounded down to
            `align`), with a guard page before and after."""
            nonlocal cursor
            pages = max(1, -(-(nbytes + align - 1) // PAGE))
            end = cursor + PAGE + pages * PAGE
            start = (end - nbytes) // align * align
            if end + PAGE > JOB_BYTES:
                raise ValueError(f"the job does not fit the {JOB_BYTES >> 20} MiB job block")
            regions.append((JOB_BASE + start, end - start))
            cursor = end
            return start, end
        for name, arr in blobs.items():
            b = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
            start, end = place(b.size, 1)
            job[start:end] = b
            s[J[name]] = start
        spans = {}
        for name, nbytes in outputs.items():
            spans[name] = place(nbytes, 1)
            job[spans[name][0]:spans[name][1]] = 0xFF  # NaN in every dtype: what is not written shows
            s[J[name]] = spans[name][0]
        err, err_end = place(256, 1)
        job[err:err_end] = 0
        work, _ = place(work_bytes, 64)
        s[J["ERR"]], s[J["ERR_BYTES"]] = err, 256
        s[J["WORK"]], s[J["WORK_BYTES"]] = work, work_bytes
        job[:head] = s.view(np.uint8)
        self._page_table(regions)
        self.events.clear()
        self.session.cpu.state = self._state()
        self.session.run([self.hook])
        if self.events != ["hlt"]:
            where = f" (address {self.session.cpu.cr2:#x})" if self.events[-1][1:2] == (14,) else ""
            raise RuntimeError(f"emulated job did not finish: {self.events}{where} at rip "
                               f"{self.session.cpu.state.rip:#x}")
        r = np.frombuffer(job[:head].tobytes(), dtype=np.int64)
        text = bytes(job[err:err_end]).split(b"\0")[0].decode(errors="replace")
        return r, {name: bytes(job[a:b]) for name, (a, b) in spans.items()}, text

    def job(self, slots, blobs, outputs):
        """run() twice: the first pass sizes the workspace (status 2), the second runs with
        exactly that much; raises if the job refuses its arguments."""
        r, out, err = self.run(slots, blobs, outputs)
        if r[J["STATUS"]] == 2:
            r, out, err = self.run(slots, blobs, outputs, work_bytes=int(r[J["WORK_NEED"]]))
        if r[J["STATUS"]] != 0:
            raise RuntimeError(f"emulated job failed (status {r[J['STATUS']]}): {err}")
        return r, out

    def bsmm(self, op, dtype, isa, index, T, x=None, w=None, dy=None, lr_a=None, lr_b=None,
             bias=None, pairs=0, tasks=1):
        """One pf_bsmm_serial call; `index` = (R, C, b1, b2, row_ptr, col_idx, col_ptr,
        row_idx, csc_blk), operands numpy arrays of the storage dtype (bf16 as uint16).
        Returns (output array, the job's slots)."""
        R, C, b1, b2, row_ptr, col_idx, col_ptr, row_idx, csc_blk = index
        nnz = len(col_idx)
        es = {"float32": 4, "bfloat16": 2, "float64": 8}[dtype]
        width = {"fwd": R * b1, "bwd_x": C * b2}.get(op)
        n_out = nnz * b1 * b2 if op == "bwd_w" else T * width
        rank = 0 if lr_a is None else lr_a.shape[1]
        slots = dict(KIND=0, OP=OP[op], DTYPE=DTYPE[dtype], T=T, R=R, C=C, B1=b1, B2=b2, NNZ=nnz,
                     ISA=ISA[isa], PAIRS=pairs, TASKS=tasks, RANK=rank, LDX=C * b2, LDY=R * b1,
                     LDO=width or 0, LDLR=rank)
        blobs = dict(ROW_PTR=row_ptr, COL_IDX=col_idx, COL_PTR=col_ptr, ROW_IDX=row_idx, CSC_BLK=csc_blk)
        for name, arr in (("X", x), ("W", w), ("DY", dy), ("LR_A", lr_a), ("LR_B", lr_b), ("BIAS", bias)):
            if arr is not None:
                blobs[name] = arr
        r, out = self.job(slots, blobs, {"OUT": n_out * es})
        shape = (nnz, b1, b2) if op == "bwd_w" else (T, width)
        return np.frombuffer(out["OUT"], dtype=NP_DTYPE[dtype]).reshape(shape).copy(), r

    def attention(self, op, dtype, isa, index, block, scale, causal, q, k, v, out=None, lse=None,
                  dout=None, dlse=None, features=None, key_mask=None, per_problem=0, tasks=1):
        """One pf_attn_serial call on [batch, heads, L, d] operands (numpy, bf16 as uint16;
        `index` = (row_ptr, col_idx, col_ptr, row_idx)). FWD returns {"OUT", "LSE"}, BWD
        {"DQ", "DK", "DV"}, as arrays."""
        B, H, L, d = q.shape
        row_ptr, col_idx, col_ptr, row_idx = index
        es = {"float32": 4, "bfloat16": 2, "float64": 8}[dtype]
        lse_dtype = np.float64 if dtype == "float64" else np.float32
        slots = dict(KIND=3, OP=0 if op == "fwd" else 1, DTYPE=DTYPE[dtype], ISA=ISA[isa], TASKS=tasks,
                     BATCH=B, HEADS=H, L=L, D=d, BLOCK=block, NNZ=len(col_idx),
                     SCALE=struct.unpack("<q", struct.pack("<d", scale))[0], CAUSAL=int(causal),
                     PER_PROBLEM=per_problem, RANK=0 if features is None else features.shape[0])
        blobs = dict(ROW_PTR=row_ptr, COL_IDX=col_idx, COL_PTR=col_ptr, ROW_IDX=row_idx, Q=q, K=k, V=v)
        for name, arr in (("OUT", out), ("LSE", lse), ("DOUT", dout), ("DLSE", dlse),
                          ("FEATURES", features), ("KEY_MASK", key_mask)):
            if arr is not None:
                blobs[name] = arr
        n = q.size * es
        outputs = {"OUT": n, "LSE": B * H * L * np.dtype(lse_dtype).itemsize} if op == "fwd" else \
            {"DQ": n, "DK": n, "DV": n}
        _, got = self.job(slots, blobs, outputs)
        return {name: np.frombuffer(b, dtype=lse_dtype if name == "LSE" else NP_DTYPE[dtype]).reshape(
            q.shape[:-1] if name == "LSE" else q.shape).copy() for name, b in got.items()}

    def probe(self, kind, iters, isa="avx512"):
        """pf_peak_dpbf16 (kind 'dpbf16') or pf_peak_fma(isa) (kind 'fma') for `iters`
        rounds; returns (FLOPs, sink, the job's slots)."""
        slots = dict(KIND=1 if kind == "dpbf16" else 2, ISA=ISA[isa], ITERS=iters)
        r, _, _ = self.run(slots, {}, {})
        return int(r[J["RESULT"]]), struct.unpack("<d", struct.pack("<q", int(r[J["SINK"]])))[0], r
