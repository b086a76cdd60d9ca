"""Run-time backends of exported models: kernels that compute with the integer codes instead of faking them."""

from supernet.runtime.cpu_int8 import CPU_INT8, cpu_int8_unavailable, install_cpu_int8

BACKENDS = ("reference", CPU_INT8)

__all__ = ["BACKENDS", "CPU_INT8", "cpu_int8_unavailable", "install_cpu_int8"]
