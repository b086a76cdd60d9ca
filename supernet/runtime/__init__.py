"""Run-time backends of exported models: kernels that compute with the integer codes instead of faking them."""

from supernet.runtime.cpu_int8 import CPU_INT8, cpu_int8_unavailable, install_cpu_int8
from supernet.settings import RUNTIME_BACKENDS

BACKENDS = RUNTIME_BACKENDS
assert CPU_INT8 in BACKENDS

__all__ = ["BACKENDS", "CPU_INT8", "cpu_int8_unavailable", "install_cpu_int8"]
