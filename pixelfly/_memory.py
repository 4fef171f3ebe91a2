"""This machine's physical memory: the bound past which a requested size is refused with an
error naming the argument, instead of an allocator failure deep inside."""
import os


def physical_memory() -> int:
    """Bytes of physical memory (2**62 when the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62
