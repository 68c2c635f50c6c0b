"""Backend selection and the device layer: the only part of bptt that knows library names.

Installed as ``bptt.backends``. Lazy: no array library is imported until it is
asked for, and probing CuPy never crashes or hangs on a machine without a GPU.

>>> from bptt import backends
>>> be = backends.get_backend("numpy")
>>> x = be.asarray([1.0, 2.0], dtype="float64")
>>> be.to_numpy(x).sum()
np.float64(3.0)

Choice order for functions that create arrays (``init_params``, the CLI): an
explicit ``backend=``/``device=`` argument, else the ``BPTT_BACKEND``
environment variable, else ``"numpy"``. Functions that take arrays follow the
arrays and never move them: :func:`namespace_of` finds their namespace and
device, :func:`device_context` makes that device current.

Modules: ``_backend`` (the Backend record), ``_probe`` (usable or not, and why),
``_devices`` (reading ``device=``), ``_loaders`` (one per library), ``_select``
(name or array -> Backend), ``_arrays`` (arrays passed in), ``_dtypes`` (JAX's
x64 switch), ``_transfer`` (host copies), ``_describe`` (``bptt info``).
"""

from __future__ import annotations

from ._arrays import (
    device_context,
    device_of,
    is_array,
    is_traced,
    library_name,
    namespace_library,
    namespace_of,
)
from ._backend import Backend, BackendError
from ._describe import describe
from ._probe import NAMES, BackendStatus, list_backends
from ._select import ENV_VAR, backend_of, get_backend, resolve_name

__all__ = [
    "ENV_VAR",
    "NAMES",
    "Backend",
    "BackendError",
    "BackendStatus",
    "backend_of",
    "describe",
    "device_context",
    "device_of",
    "get_backend",
    "is_array",
    "is_traced",
    "library_name",
    "list_backends",
    "namespace_library",
    "namespace_of",
    "resolve_name",
]

# Private, reached by the tests (tests/conftest.py, test_cupy_detection.py) as backends._name.
from ._devices import cupy_device_index as _cupy_device_index  # noqa: F401
from ._probe import cupy_status as _cupy_status  # noqa: F401
from ._probe import jax_status as _jax_status  # noqa: F401
from ._probe import torch_cuda_status as _torch_cuda_status  # noqa: F401
