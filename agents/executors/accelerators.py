"""Which accelerator resource a lease asks a cluster for, by the vendor of its model.

Slurm and Kubernetes name accelerators per vendor (``gpu`` / ``nvidia.com/gpu`` for NVIDIA,
``npu`` / ``huawei.com/Ascend910`` for Huawei Ascend). The vendor comes from the platform's model
table (``jinsuan.contract.accelerators``, standard library only) and, for models it does not
list, from the vendor word in the name; a lease that names no model gets the site's default
vendor.
"""

from __future__ import annotations

from collections.abc import Mapping

from agents.executors import StartError
from jinsuan.contract.accelerators import lookup
from jinsuan.contract.leasewire import Lease

# Words in a model name that give its vendor away, for models the table does not list.
_NAME_HINTS = (
    ("ascend", "huawei"),
    ("nvidia", "nvidia"),
    ("tesla", "nvidia"),
    ("geforce", "nvidia"),
    ("quadro", "nvidia"),
    ("cambricon", "cambricon"),
    ("mlu", "cambricon"),
)


def vendor_of(model: str) -> str | None:
    """The vendor of ``model`` in lower case (``"nvidia"``, ``"huawei"``), None if unknown."""
    spec = lookup(model)
    if spec is not None:
        return spec.vendor.casefold()
    folded = model.casefold()
    return next((vendor for hint, vendor in _NAME_HINTS if hint in folded), None)


def resource_name(lease: Lease, names: Mapping[str, str], default_vendor: str, key: str) -> str:
    """The resource name for ``lease``'s accelerators; ``key`` names the option in errors."""
    model = lease.accelerator_model
    vendor = vendor_of(model) if model else default_vendor
    if vendor is None:
        raise StartError(
            f"cannot tell the vendor of accelerator model {model!r}; "
            f"known vendors here: {', '.join(sorted(names))}"
        )
    try:
        return names[vendor]
    except KeyError:
        raise StartError(
            f"no resource name for {vendor} accelerators (model {model!r}); "
            f"set executor.{key}.{vendor}"
        ) from None
