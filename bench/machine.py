"""What a benchmark ran on, recorded beside its figures (speeds differ between hosts)."""

import os
import pathlib
import platform
import re


def cpu_model():
    """The CPU's model name (Linux's /proc/cpuinfo), or what `platform` knows elsewhere."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.is_file() else None
    return found.group(1).strip() if found else platform.processor()


def record():
    """`{"cpu", "cpus", "platform", "python", "tensorflow", "keras", "load_average"}` of this process's machine now."""
    import keras
    import tensorflow as tf

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "load_average": round(os.getloadavg()[0], 2)}


def describe():
    """One sentence for a results file: the CPU, its count and the load average now."""
    return f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)."
