"""Per-model FP16 peak: the figure the policy counts as connected compute.

The policy (晋政办发〔2024〕35号) counts compute as **peak dense FP16 tensor
throughput**: no 2:4 structured-sparsity doubling, one figure per accelerator, summed over the
accelerators that are connected and reporting. This module holds that figure per model, each with
the vendor document it comes from, and an estimate for NVIDIA parts the table does not know.

Conventions every entry follows:

* ``fp16_dense_tflops`` is the vendor's dense FP16 Tensor Core (or matrix-unit) figure. Where the
  vendor prints only a with-sparsity figure it is halved and the ``source`` says so. Where the
  vendor prints separate FP16-accumulate and FP32-accumulate figures (GeForce parts), the
  FP16-accumulate one is used and the ``source`` says so.
* A model whose figure could not be traced to a document is left out, so it reports ``None``
  rather than a guess. Entries whose only source is secondary are marked ``SECONDARY SOURCE``.
* Figures are per device as the vendor's tool enumerates it (NVML GPU, npu-smi chip). The one
  exception is noted on the entry (Cambricon MLU370-X8: one card, two chips).

Name matching (:func:`lookup`) accepts the strings NVML and npu-smi report, e.g.
``"NVIDIA H100 80GB HBM3"`` (H100 SXM5), ``"NVIDIA H100 PCIe"``, ``"Tesla V100-SXM2-32GB"``,
``"Ascend910B3"``. Names are compared as sets of lower-case tokens, with vendor words dropped.
Memory tokens (``80GB``, ``HBM3``) are ignored only when every model the remaining tokens could
mean has the same figure: for the H100, NVML's ``"80GB HBM3"`` is what marks the SXM part, so a
bare ``"NVIDIA H100"`` matches nothing and falls through to the SM-count estimate, which does tell
the 132-SM SXM part from the 114-SM PCIe part.

This module imports only the standard library: site agents use it without the server's packages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_HOPPER_DATASHEET = (
    "NVIDIA H100 Tensor Core GPU datasheet, "
    "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
)
_HOPPER_WHITEPAPER = (
    "NVIDIA H100 Tensor Core GPU Architecture whitepaper, "
    "https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper"
)
_AMPERE_WHITEPAPER = (
    "NVIDIA A100 Tensor Core GPU Architecture whitepaper, "
    "https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/"
    "nvidia-ampere-architecture-whitepaper.pdf"
)
_GA102_WHITEPAPER = (
    "NVIDIA Ampere GA102 GPU Architecture whitepaper, "
    "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf"
)
_ADA_WHITEPAPER = (
    "NVIDIA Ada GPU Architecture whitepaper, "
    "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"
)
_VOLTA_WHITEPAPER = (
    "NVIDIA Tesla V100 GPU Architecture whitepaper, "
    "https://images.nvidia.com/content/volta-architecture/pdf/volta-architecture-whitepaper.pdf"
)
_TURING_WHITEPAPER = (
    "NVIDIA Turing GPU Architecture whitepaper, "
    "https://images.nvidia.com/aem-dam/en-zz/Solutions/design-visualization/technologies/"
    "turing-architecture/NVIDIA-Turing-Architecture-Whitepaper.pdf"
)
_A100_DATASHEET = (
    "NVIDIA A100 Tensor Core GPU datasheet, "
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf, specifications table: "
    "FP16 Tensor Core 312 TFLOPS | 624 TFLOPS with sparsity (same for SXM and PCIe, 40GB and 80GB)"
)
_A800_DATASHEET = (
    "NVIDIA A800 Tensor Core GPU datasheet (China market), "
    "https://www.nvidia.cn/data-center/a800/, specifications table: FP16 Tensor Core "
    "312 TFLOPS | 624 TFLOPS with sparsity (A100 compute; NVLink cut to 400 GB/s)"
)
_V100_DATASHEET = (
    "NVIDIA Tesla V100 GPU datasheet, "
    "https://images.nvidia.com/content/technologies/volta/pdf/"
    "volta-v100-datasheet-update-us-1165301-r5.pdf, specifications table 'Tensor Performance' "
    "(Volta has no sparsity mode)"
)
_H20_L20_SECONDARY = (
    "SECONDARY SOURCE: NVIDIA publishes no public datasheet for this China-market part; figure "
    "from the specification table in Tom's Hardware, 'New Nvidia AI GPUs designed to get around "
    "US export bans come to China: H20, L20 and L2', "
    "https://www.tomshardware.com/pc-components/gpus/"
    "new-nvidia-ai-gpus-designed-to-get-around-us-export-bans-come-to-china-h20-l20-and-l2-to-"
    "fill-void-left-by-restricted-models, row 'BF16 | FP16 Tensor' (dense: FP8 and INT8 rows are "
    "exactly twice it)"
)

#: Vendor words that never tell two models apart; dropped before comparing names.
_VENDOR_TOKENS = frozenset({"nvidia", "tesla", "geforce", "huawei", "ascend", "cambricon"})
#: npu-smi and CANN glue the vendor word to the model ("Ascend910B3"); split it off.
_GLUED_PREFIXES = ("ascend",)
_MEMORY_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(?:gb|gib|g)$")
_MEMORY_KIND = re.compile(r"^(?:hbm\d*e?|gddr\d*x?|lpddr\d*x?)$")
_SEPARATORS = re.compile(r"[\W_]+")
_URL = re.compile(r"https?://\S+")
#: "40 GB" is one memory token, as in "40GB"; a unit left standing alone names nothing.
_SPACED_SIZE = re.compile(r"(\d)[\s_-]+(gib|gb)\b")
_UNIT_TOKENS = frozenset({"gb", "gib"})


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One accelerator model's nameplate FP16 figure and where it comes from.

    ``aliases`` are the names tools report for this model (NVML, npu-smi, cnmon), in any case or
    separator style; :func:`lookup` matches against them.
    """

    name: str
    vendor: str
    domestic: bool
    fp16_dense_tflops: float
    memory_gb: float | None
    source: str
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"ModelSpec {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"{where}: name is empty")
        if not isinstance(self.vendor, str) or not self.vendor.strip():
            raise ValueError(f"{where}: vendor is empty")
        if not isinstance(self.domestic, bool):
            raise ValueError(f"{where}: domestic must be a bool, got {self.domestic!r}")
        tflops = self.fp16_dense_tflops
        if isinstance(tflops, bool) or not isinstance(tflops, int | float) or not 0 < tflops < 1e6:
            raise ValueError(
                f"{where}: fp16_dense_tflops must be a positive TFLOPS figure, got {tflops!r}"
            )
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise ValueError(f"{where}: memory_gb must be positive or None, got {self.memory_gb!r}")
        if not isinstance(self.source, str) or not _URL.search(self.source):
            raise ValueError(f"{where}: source must cite a document with its URL")
        if not isinstance(self.aliases, tuple) or not all(isinstance(a, str) for a in self.aliases):
            raise ValueError(f"{where}: aliases must be a tuple of strings")


@dataclass(frozen=True, slots=True)
class Fp16Peak:
    """The FP16 figure for one reported accelerator and how it was obtained.

    ``tflops`` is None when neither the table nor the estimate applies; such an accelerator is
    reported but contributes nothing to connected compute until the table learns it.
    """

    tflops: float | None
    estimated: bool
    source: str
    domestic: bool


def _spec(
    name: str,
    vendor: str,
    tflops: float,
    memory_gb: float | None,
    source: str,
    *aliases: str,
) -> ModelSpec:
    return ModelSpec(name, vendor, is_domestic(vendor), tflops, memory_gb, source, (name, *aliases))


_DOMESTIC_KEYS = (
    "huawei", "ascend", "hisilicon", "华为", "昇腾", "海思",
    "hygon", "海光",
    "cambricon", "寒武纪",
    "kunlunxin", "kunlun", "昆仑",
    "enflame", "燧原",
    "iluvatar", "天数",
    "metax", "沐曦",
    "moorethreads", "mthreads", "摩尔线程",
    "biren", "壁仞",
)  # fmt: skip


def is_domestic(vendor: str) -> bool:
    """Whether ``vendor`` is a domestic (信创) accelerator maker, matched loosely by name."""
    if not vendor or not vendor.strip():
        raise ValueError("vendor is empty")
    compact = _SEPARATORS.sub("", vendor.casefold())
    return any(key in compact for key in _DOMESTIC_KEYS)


def normalise_name(model_name: str) -> str:
    """The comparison key of a model name: its tokens, lower-case, vendor words dropped, sorted.

    ``"NVIDIA A100-SXM4-80GB"`` and ``"a100 80gb sxm4"`` give the same key. Applying it to its
    own output changes nothing.
    """
    tokens = set()
    folded = _SPACED_SIZE.sub(r"\1\2", model_name.casefold())
    for raw in _SEPARATORS.sub(" ", folded).split():
        token = raw
        for prefix in _GLUED_PREFIXES:
            while token.startswith(prefix) and len(token) > len(prefix):
                token = token[len(prefix) :]
        if token not in _VENDOR_TOKENS and token not in _UNIT_TOKENS:
            tokens.add(token)
    return " ".join(sorted(tokens))


def _is_memory_token(token: str) -> bool:
    return bool(_MEMORY_SIZE.match(token) or _MEMORY_KIND.match(token))


def _without_memory(key: str) -> str:
    return " ".join(t for t in key.split() if not _is_memory_token(t))


def _memory_gb(key: str) -> float | None:
    for token in key.split():
        match = _MEMORY_SIZE.match(token)
        if match:
            return float(match.group(1))
    return None


def _index(specs: Iterable[ModelSpec], *, memory_free_only: bool) -> dict[str, list[ModelSpec]]:
    """Map alias keys to specs, refusing any key that would mean two different figures."""
    index: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        for alias in spec.aliases:
            key = normalise_name(alias)
            if not key:
                raise ValueError(f"{spec.name}: alias {alias!r} has no model tokens")
            if memory_free_only and key != _without_memory(key):
                continue
            entries = index.setdefault(key, [])
            if spec not in entries:
                entries.append(spec)
    for key, entries in index.items():
        figures = {s.fp16_dense_tflops for s in entries}
        if len(figures) > 1:
            names = ", ".join(s.name for s in entries)
            raise ValueError(f"alias key {key!r} is ambiguous: {names} have different figures")
    return index


MODELS: tuple[ModelSpec, ...] = (
    # --- NVIDIA Ampere (GA100) ---------------------------------------------------------------
    _spec("NVIDIA A100 SXM4 40GB", "NVIDIA", 312.0, 40, _A100_DATASHEET,
          "NVIDIA A100-SXM4-40GB", "A100 SXM4", "A100 SXM", "A100"),
    _spec("NVIDIA A100 SXM4 80GB", "NVIDIA", 312.0, 80, _A100_DATASHEET,
          "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM-80GB", "A100 SXM4", "A100 SXM", "A100"),
    _spec("NVIDIA A100 PCIe 40GB", "NVIDIA", 312.0, 40, _A100_DATASHEET,
          "NVIDIA A100-PCIE-40GB", "A100 PCIe", "A100"),
    _spec("NVIDIA A100 PCIe 80GB", "NVIDIA", 312.0, 80, _A100_DATASHEET,
          "NVIDIA A100 80GB PCIe", "A100 PCIe", "A100"),
    _spec("NVIDIA A800 SXM4 80GB", "NVIDIA", 312.0, 80, _A800_DATASHEET,
          "NVIDIA A800-SXM4-80GB", "A800 SXM4", "A800 SXM", "A800"),
    _spec("NVIDIA A800 PCIe 80GB", "NVIDIA", 312.0, 80, _A800_DATASHEET,
          "NVIDIA A800 80GB PCIe", "A800 PCIe", "A800"),
    _spec("NVIDIA A30", "NVIDIA", 165.0, 24,
          "NVIDIA A30 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/"
          "Solutions/data-center/products/a30-gpu/pdf/a30-datasheet.pdf, specifications table: "
          "FP16 Tensor Core 165 TFLOPS | 330 TFLOPS with sparsity",
          "NVIDIA A30", "A30 24GB"),
    # --- NVIDIA Ampere (GA102) ---------------------------------------------------------------
    _spec("NVIDIA A10", "NVIDIA", 125.0, 24,
          "NVIDIA A10 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/"
          "Solutions/Data-Center/a10/pdf/a10-datasheet.pdf, specifications table: "
          "FP16 Tensor Core 125 TF | 250 TF with sparsity",
          "NVIDIA A10"),
    _spec("NVIDIA A40", "NVIDIA", 149.7, 48,
          "NVIDIA A40 datasheet, https://images.nvidia.com/content/Solutions/data-center/a40/"
          "nvidia-a40-datasheet.pdf, specifications table: Peak FP16 Tensor TFLOPS with FP16 "
          "Accumulate 149.7 | 299.4 with sparsity",
          "NVIDIA A40"),
    # --- NVIDIA Hopper -----------------------------------------------------------------------
    _spec("NVIDIA H100 SXM5 80GB", "NVIDIA", 989.4, 80,
          f"{_HOPPER_DATASHEET}, specifications table: H100 SXM FP16 Tensor Core 1,979 teraFLOPS "
          f"with sparsity, halved; dense 989.4 per {_HOPPER_WHITEPAPER}, table 'NVIDIA H100 "
          "SXM5' peak FP16 Tensor TFLOPS",
          "NVIDIA H100 80GB HBM3", "H100 SXM5 80GB", "H100 SXM5", "H100 SXM"),
    _spec("NVIDIA H100 PCIe 80GB", "NVIDIA", 756.5, 80,
          f"{_HOPPER_DATASHEET}, specifications table: H100 PCIe FP16 Tensor Core 1,513 "
          "teraFLOPS with sparsity, halved",
          "NVIDIA H100 PCIe", "H100 PCIe 80GB"),
    _spec("NVIDIA H100 NVL 94GB", "NVIDIA", 835.5, 94,
          f"{_HOPPER_DATASHEET}, specifications table: H100 NVL FP16 Tensor Core 1,671 "
          "teraFLOPS with sparsity (per GPU), halved",
          "NVIDIA H100 NVL"),
    _spec("NVIDIA H800 SXM5 80GB", "NVIDIA", 989.4, 80,
          "NVIDIA H800 Tensor Core GPU datasheet (China market), "
          "https://www.nvidia.cn/data-center/h800/, specifications table: H800 SXM FP16 Tensor "
          "Core 1,979 teraFLOPS with sparsity, halved (H100 SXM compute; NVLink 400 GB/s); "
          f"dense 989.4 per {_HOPPER_WHITEPAPER}, table 'NVIDIA H100 SXM5'",
          "NVIDIA H800", "H800 SXM5", "H800 SXM"),
    _spec("NVIDIA H800 PCIe 80GB", "NVIDIA", 756.5, 80,
          "Lenovo Press product guide 'ThinkSystem NVIDIA H800 PCIe Gen5 GPU' (LP1814), "
          "https://lenovopress.lenovo.com/lp1814-thinksystem-nvidia-h800-pcie-gen5-gpu, "
          "specifications table: FP16 Tensor Core 1,513 TFLOPS with sparsity, halved",
          "NVIDIA H800 PCIe"),
    _spec("NVIDIA H20", "NVIDIA", 148.0, 96, _H20_L20_SECONDARY, "NVIDIA H20"),
    _spec("NVIDIA H200 SXM 141GB", "NVIDIA", 989.4, 141,
          "NVIDIA H200 Tensor Core GPU datasheet, https://nvdam.widen.net/s/nb5zzzsjdf/"
          "hpc-datasheet-sc23-h200-datasheet-3002446, specifications table: H200 SXM FP16 "
          "Tensor Core 1,979 TFLOPS with sparsity, halved; dense 989.4 per "
          f"{_HOPPER_WHITEPAPER}, table 'NVIDIA H100 SXM5' (the same 132 SMs, read on an H200 "
          "in docs/hardware-validation.md)",
          "NVIDIA H200", "H200 SXM", "H200 SXM5"),
    _spec("NVIDIA H200 NVL 141GB", "NVIDIA", 835.5, 141,
          "NVIDIA H200 Tensor Core GPU datasheet, https://nvdam.widen.net/s/nb5zzzsjdf/"
          "hpc-datasheet-sc23-h200-datasheet-3002446, specifications table: H200 NVL FP16 "
          "Tensor Core 1,671 TFLOPS with sparsity, halved",
          "NVIDIA H200 NVL"),
    # --- NVIDIA Blackwell --------------------------------------------------------------------
    _spec("NVIDIA B200", "NVIDIA", 2250.0, 180,
          "NVIDIA HGX platform page, https://www.nvidia.com/en-us/data-center/hgx/, HGX B200 "
          "specifications: FP16/BF16 Tensor Core 36 PFLOPS with sparsity for 8 GPUs, so "
          "4.5 PFLOPS per GPU with sparsity, halved; memory 1,440 GB / 8 per DGX B200 page "
          "https://www.nvidia.com/en-us/data-center/dgx-b200/",
          "NVIDIA B200"),
    # --- NVIDIA Ada --------------------------------------------------------------------------
    _spec("NVIDIA L40S", "NVIDIA", 362.05, 48,
          "NVIDIA L40S GPU datasheet, https://resources.nvidia.com/en-us-l40s/"
          "l40s-datasheet-28413, specifications table: FP16 Tensor Core 362.05 TFLOPS "
          "(dense figure as printed; 733 with sparsity)",
          "NVIDIA L40S"),
    _spec("NVIDIA L40", "NVIDIA", 181.05, 48,
          "NVIDIA L40 GPU datasheet, https://images.nvidia.com/content/Solutions/data-center/"
          "vgpu-L40-datasheet.pdf, specifications table: FP16 Tensor Core 181.05 TFLOPS "
          "(dense figure as printed; 362.1 with sparsity). This is half the L40S figure on the "
          "same 142-SM AD102 and matches Ada's FP32-accumulate rate; kept as printed",
          "NVIDIA L40"),
    _spec("NVIDIA L20", "NVIDIA", 119.5, 48, _H20_L20_SECONDARY, "NVIDIA L20"),
    _spec("NVIDIA L4", "NVIDIA", 121.0, 24,
          "NVIDIA L4 Tensor Core GPU datasheet, https://resources.nvidia.com/"
          "en-us-data-center-overview/l4-gpu-datasheet, specifications table: FP16 Tensor Core "
          "242 teraFLOPS with sparsity, halved",
          "NVIDIA L4"),
    _spec("NVIDIA GeForce RTX 4090", "NVIDIA", 330.3, 24,
          f"{_ADA_WHITEPAPER}, Appendix A table 'GeForce RTX 4090': Peak FP16 Tensor TFLOPS "
          "with FP16 Accumulate 330.3 (660.6 with sparsity); with FP32 accumulate it is 165.2. "
          "The FP16-accumulate dense figure is used for GeForce parts",
          "NVIDIA GeForce RTX 4090", "RTX 4090"),
    # --- NVIDIA Volta / Turing ---------------------------------------------------------------
    _spec("NVIDIA V100 SXM2 16GB", "NVIDIA", 125.0, 16, _V100_DATASHEET + ": V100 SXM2 125",
          "Tesla V100-SXM2-16GB", "V100 SXM2", "V100 SXM"),
    _spec("NVIDIA V100 SXM2 32GB", "NVIDIA", 125.0, 32, _V100_DATASHEET + ": V100 SXM2 125",
          "Tesla V100-SXM2-32GB", "V100 SXM2", "V100 SXM"),
    _spec("NVIDIA V100 PCIe 16GB", "NVIDIA", 112.0, 16, _V100_DATASHEET + ": V100 PCIe 112",
          "Tesla V100-PCIE-16GB", "V100 PCIe"),
    _spec("NVIDIA V100 PCIe 32GB", "NVIDIA", 112.0, 32, _V100_DATASHEET + ": V100 PCIe 112",
          "Tesla V100-PCIE-32GB", "V100 PCIe"),
    _spec("NVIDIA T4", "NVIDIA", 65.0, 16,
          "NVIDIA T4 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/"
          "Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf, specifications "
          "table: Mixed Precision (FP16/FP32) 65 TFLOPS (Turing has no sparsity mode)",
          "Tesla T4", "NVIDIA T4"),
    # --- Huawei Ascend -----------------------------------------------------------------------
    # Named 910A: npu-smi on Atlas A3 hosts reports the newer dual-die chips as plain
    # "Ascend910", which must not be counted at the original 910's figure.
    _spec("Huawei Ascend 910A", "Huawei", 256.0, 32,
          "Huawei press release 'Huawei launches Ascend 910, the world's most powerful AI "
          "processor, and MindSpore, an all-scenario AI computing framework' (2019-08-23), "
          "https://www.huawei.com/en/news/2019/8/huawei-ascend-910-most-powerful-ai-processor: "
          "'For half-precision floating point (FP16) operations, Ascend 910 delivers 256 "
          "TeraFLOPS'. Applies to the original 910 (910A) only, not 910B or 910Pro variants",
          "910A", "Ascend910A"),
    # --- Cambricon ---------------------------------------------------------------------------
    _spec("Cambricon MLU370-X8", "Cambricon", 96.0, 48,
          "Cambricon MLU370-X8 product page (思元370 MLU370-X8 智能加速卡), "
          "https://cambricon.com/index.php?a=lists&c=index&catid=406&m=content, specifications: "
          "FP16 96 TFLOPS, BF16 96 TFLOPS (no sparsity mode). The figure is per CARD, which "
          "carries two MLU370 chips: count cards, not chips",
          "MLU370-X8"),
)  # fmt: skip

_EXACT = _index(MODELS, memory_free_only=False)
_LOOSE = _index(MODELS, memory_free_only=True)


def lookup(model_name: str) -> ModelSpec | None:
    """The table entry for a model name as a device tool reports it, or None if unknown."""
    if not isinstance(model_name, str):
        raise TypeError(f"model name must be a string, got {type(model_name).__name__}")
    key = normalise_name(model_name)
    if not key:
        raise ValueError(f"model name {model_name!r} has no model tokens")
    candidates = _EXACT.get(key) or _LOOSE.get(_without_memory(key))
    if not candidates:
        return None
    wanted_gb = _memory_gb(key)
    for spec in candidates:
        if spec.memory_gb is not None and spec.memory_gb == wanted_gb:
            return spec
    return candidates[0]


@dataclass(frozen=True, slots=True)
class _Arch:
    name: str
    flops_per_sm_per_clock: int
    source: str


#: Dense FP16 tensor FLOPs per SM per clock, FP16 accumulate (2 FLOPs per FMA), by compute
#: capability. Each is tensor cores per SM × dense FP16 FMA per tensor core per clock × 2.
#: Blackwell (10.x, 12.x) is absent: NVIDIA publishes no per-SM tensor rate for it, so an
#: unknown Blackwell part gets no estimate rather than a derived guess.
_ARCHITECTURES: dict[tuple[int, int], _Arch] = {
    (7, 0): _Arch("Volta GV100", 8 * 64 * 2, f"{_VOLTA_WHITEPAPER}: 8 tensor cores/SM, 64 FMA"),
    (7, 5): _Arch("Turing", 8 * 64 * 2,
                  f"{_TURING_WHITEPAPER}: 8 tensor cores/SM, 64 FP16 FMA (FP16 accumulate; "
                  "GeForce parts run FP32 accumulate at half this rate)"),
    (8, 0): _Arch("Ampere GA100", 4 * 256 * 2,
                  f"{_AMPERE_WHITEPAPER}: 4 tensor cores/SM, 256 dense FP16 FMA"),
    (8, 6): _Arch("Ampere GA10x", 4 * 128 * 2,
                  f"{_GA102_WHITEPAPER}: 4 tensor cores/SM, 128 dense FP16 FMA (FP16 "
                  "accumulate; GeForce parts run FP32 accumulate at half this rate)"),
    (8, 9): _Arch("Ada", 4 * 128 * 2,
                  f"{_ADA_WHITEPAPER}: 4 tensor cores/SM, 128 dense FP16 FMA (FP16 "
                  "accumulate; GeForce parts run FP32 accumulate at half this rate)"),
    (9, 0): _Arch("Hopper", 4 * 512 * 2,
                  f"{_HOPPER_WHITEPAPER}: 4 tensor cores/SM, 512 dense FP16 FMA"),
}  # fmt: skip


#: Huawei Ascend (Da Vinci) has no compute capability; its rate is per AI core. Checked against
#: the table: the original Ascend 910's 32 AI cores at about 1 GHz give 262 TFLOPS against the
#: 256 Huawei states, so the estimate is an upper bound within a few percent.
_DA_VINCI = _Arch(
    "Huawei Da Vinci AI Core",
    16 * 16 * 16 * 2,
    "Huawei, 'DaVinci: A Scalable Architecture for Neural Network Computing', Hot Chips 31 "
    "(2019), https://old.hotchips.org/hc31/HC31_1.11_Huawei.Davinci.HengLiao_v4.0.pdf: the Cube "
    "unit performs a 16×16×16 FP16 matrix multiply-accumulate (4,096 MACs) per cycle per AI core",
)


def _check_sm_data(sm_count: int, sm_clock_max_mhz: float) -> None:
    if isinstance(sm_count, bool) or not isinstance(sm_count, int) or sm_count <= 0:
        raise ValueError(f"sm_count must be a positive integer, got {sm_count!r}")
    if not sm_clock_max_mhz > 0 or sm_clock_max_mhz == float("inf"):
        raise ValueError(
            f"sm_clock_max_mhz must be a positive finite MHz value, got {sm_clock_max_mhz!r}"
        )


def _estimate(
    vendor: str,
    sm_count: int | None,
    sm_clock_max_mhz: float | None,
    compute_capability: tuple[int, int] | None,
) -> tuple[float, _Arch] | None:
    folded = vendor.casefold()
    if sm_count is None or sm_clock_max_mhz is None:
        return None
    if "huawei" in folded or "ascend" in folded:
        arch: _Arch | None = _DA_VINCI
    elif "nvidia" in folded and compute_capability is not None:
        arch = _ARCHITECTURES.get(tuple(compute_capability))
    else:
        return None
    _check_sm_data(sm_count, sm_clock_max_mhz)
    if arch is None:
        return None
    tflops = sm_count * arch.flops_per_sm_per_clock * sm_clock_max_mhz * 1e6 / 1e12
    return tflops, arch


def estimate_fp16_tflops(
    vendor: str,
    sm_count: int | None,
    sm_clock_max_mhz: float | None,
    compute_capability: tuple[int, int] | None,
) -> float | None:
    """Dense FP16 tensor TFLOPS from SM (NVIDIA) or AI-core (Huawei Ascend) count and clock.

    TFLOPS = units × FLOPs per unit per clock × clock (MHz) × 1e6 / 1e12. NVIDIA needs the
    compute capability to pick the per-SM rate; Ascend's Da Vinci cores share one rate. Returns
    None for other vendors, for missing data and for architectures without a published rate.

    With the datasheet boost clock this reproduces the datasheet figures within about 1%
    (tests/test_accelerators.py). NVML's *maximum* SM clock can be higher than the clock NVIDIA
    rates the tensor figure at (H100 SXM5: 1980 vs 1830 MHz), so from NVML it is an upper bound.
    Export-limited parts (H20, L20) are throttled below the formula; the table covers them.
    """
    result = _estimate(vendor, sm_count, sm_clock_max_mhz, compute_capability)
    return None if result is None else result[0]


def fp16_peak(
    model: str,
    vendor: str,
    sm_count: int | None = None,
    sm_clock_max_mhz: float | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> Fp16Peak:
    """The FP16 figure to count for one accelerator: the table first, else the SM estimate."""
    spec = lookup(model)
    if spec is not None:
        return Fp16Peak(spec.fp16_dense_tflops, False, spec.source, spec.domestic)
    domestic = is_domestic(vendor)
    result = _estimate(vendor, sm_count, sm_clock_max_mhz, compute_capability)
    if result is not None:
        tflops, arch = result
        source = (
            f"ESTIMATE for {model!r} (not in the table): {sm_count} compute units × "
            f"{arch.flops_per_sm_per_clock} dense FP16 FLOPs/unit/clock ({arch.name}) × "
            f"{sm_clock_max_mhz:g} MHz max clock; per-unit rate from {arch.source}"
        )
        return Fp16Peak(tflops, True, source, domestic)
    reason = (
        f"no table entry for {model!r} ({vendor}) and no SM count, clock and known "
        "architecture to estimate from"
    )
    return Fp16Peak(None, False, reason, domestic)
