"""This machine's physical memory: the bound past which a requested size is refused with an
error naming the argument, instead of an allocator failure deep inside."""
import os


def physical_memory() -> int:
    """Bytes of physical memory (2**62 when the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_growth(fn) -> int:
    """Bytes by which ``fn()`` raised this process's resident set at its peak. Linux: the
    high-water mark VmHWM is reset to the current RSS (write 5 to /proc/self/clear_refs)
    right before the call, and ``VmHWM - VmRSS(before)`` is reported; elsewhere falls back
    to ``ru_maxrss`` (only growth past the process's earlier peak shows). Run it in a fresh
    process after a small warm-up: memory the allocator kept from earlier work is reused
    without showing."""
    import resource
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        after = _status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, after - before) * 1024
