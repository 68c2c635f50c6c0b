"""How the ranks sum the flat gradient buffer, per backend: one all-reduce per step.

- ``mpi``: MPI in place on the buffer (``Allreduce(IN_PLACE, buf)``): NumPy buffers,
  and CuPy device buffers when the MPI library is CUDA-aware;
- ``nccl``: CuPy, ``cupy.cuda.nccl``'s all-reduce queued on the current stream (no
  host sync);
- ``host``: one host copy of the buffer per step, summed by MPI, and back (JAX, torch,
  array_api_strict, or CuPy without NCCL or a CUDA-aware MPI).

The communicator is :class:`bptt.train.distributed.Communicator`; the step that calls this
between its two parts is :mod:`bptt.train.parallel`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ALLREDUCE_MODES", "gradient_allreduce", "nccl_available"]

ALLREDUCE_MODES = ("auto", "mpi", "nccl", "host")


class _HostInPlace:
    """NumPy: MPI sums the flat buffer where it lies (no copy)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.description = "MPI all-reduce in place on the flat buffer"

    def __call__(self, buf: Any) -> Any:
        return self.comm.allreduce_host(buf)


class _HostCopy:
    """Arrays MPI cannot read in place (JAX, torch, array_api_strict, CuPy without a
    CUDA-aware MPI): one host copy of the flat buffer per step, summed there, and back."""

    def __init__(self, comm: Any, backend: Any) -> None:
        self.comm, self.backend = comm, backend
        self.description = "MPI all-reduce of one host copy of the flat buffer per step"

    def __call__(self, buf: Any) -> Any:
        with self.comm.watch("the gradient all-reduce (copying the buffer to the host)"):
            host = np.array(self.backend.to_numpy(buf), copy=True)  # (N + 1,), writeable
        self.comm.allreduce_host(host)
        return self.backend.asarray(host, dtype=buf.dtype)


class _CudaAwareMPI:
    """CuPy with a CUDA-aware MPI: MPI reads and writes the device buffer itself; the
    step's kernels are waited for first (MPI knows no CUDA stream)."""

    def __init__(self, comm: Any, backend: Any) -> None:
        import cupy

        self.comm, self.cupy = comm, cupy
        self.description = "CUDA-aware MPI all-reduce in place on the device buffer"

    def __call__(self, buf: Any) -> Any:
        with self.comm.watch("the gradient all-reduce (CUDA-aware MPI)"):
            self.cupy.cuda.get_current_stream().synchronize()
            self.comm.comm.Allreduce(self.comm.MPI.IN_PLACE, buf, op=self.comm.MPI.SUM)
        return buf


class _Nccl:
    """CuPy: NCCL's all-reduce in place on the device buffer, queued on the current
    stream (no host sync). The NCCL communicator is made at the first call (its id
    broadcast over MPI), when every rank is past the start-up agreement."""

    def __init__(self, comm: Any, backend: Any) -> None:
        from cupy.cuda import nccl

        self.comm, self.nccl, self.nccl_comm = comm, nccl, None
        self.description = "NCCL all-reduce in place on the device buffer (cupy.cuda.nccl)"

    def __call__(self, buf: Any) -> Any:
        import cupy

        nccl = self.nccl
        if self.nccl_comm is None:
            uid = self.comm.bcast_nccl_id(nccl.get_unique_id)
            with self.comm.watch("setting up NCCL"):
                self.nccl_comm = nccl.NcclCommunicator(self.comm.size, uid, self.comm.rank)
        kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        stream = cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, kinds[str(buf.dtype)],
                                 nccl.NCCL_SUM, stream.ptr)  # fmt: skip
        return buf


def gradient_allreduce(comm: Any, backend: Any, mode: str = "auto") -> Any:
    """The in-place sum over ranks of a flat gradient buffer on ``backend``:
    ``buf -> summed buf``, with a ``description``.

    ``mode``: ``"auto"`` (NumPy: ``mpi``; CuPy: ``nccl`` when ``cupy.cuda.nccl``
    imports, else ``host``; others: ``host``), ``"mpi"`` (NumPy, or CuPy with a
    CUDA-aware MPI: MPI on the buffer itself), ``"nccl"`` (CuPy) or ``"host"`` (any
    backend: one host copy of the buffer per step).
    """
    if mode not in ALLREDUCE_MODES:
        raise ValueError(f"--allreduce: expected one of {list(ALLREDUCE_MODES)}; got {mode!r}")
    name = backend.name
    if mode == "auto":
        mode = {"numpy": "mpi", "cupy": "nccl" if nccl_available() else "host"}.get(name, "host")
    if mode == "host":
        return _HostCopy(comm, backend)
    if mode == "mpi" and name == "numpy":
        return _HostInPlace(comm)
    if mode == "mpi" and name == "cupy":
        return _CudaAwareMPI(comm, backend)
    if mode == "nccl" and name == "cupy":
        if not nccl_available():
            raise ValueError(
                "--allreduce nccl: cupy.cuda.nccl does not import here; install NCCL for CuPy "
                "(pip install nvidia-nccl-cu12, or cupy's [ctk] extra), or use --allreduce host"
            )
        return _Nccl(comm, backend)
    raise ValueError(
        f"--allreduce {mode}: not available on the {name} backend (mpi: NumPy, or CuPy with a "
        "CUDA-aware MPI; nccl: CuPy); --allreduce host works on every backend"
    )


def nccl_available() -> bool:
    try:
        from cupy.cuda import nccl
    except Exception:  # ImportError, or a CUDA library missing at load time
        return False
    return bool(getattr(nccl, "available", True))
