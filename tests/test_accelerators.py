"""The FP16 peak table, name matching and the SM-count estimate (jinsuan.contract.accelerators)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jinsuan.contract import accelerators
from jinsuan.contract.accelerators import (
    MODELS,
    ModelSpec,
    estimate_fp16_tflops,
    fp16_peak,
    is_domestic,
    lookup,
    normalise_name,
)

URL = re.compile(r"https?://[^\s,;]+\.[^\s,;]+")


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_every_entry_cites_a_document_with_a_url(spec: ModelSpec) -> None:
    assert spec.source.strip()
    assert URL.search(spec.source), spec.source
    assert spec.fp16_dense_tflops > 0
    assert spec.domestic == is_domestic(spec.vendor)
    assert spec.memory_gb is None or spec.memory_gb > 0


def test_entry_names_are_unique_and_each_entry_finds_itself() -> None:
    names = [s.name for s in MODELS]
    assert len(names) == len(set(names))
    for spec in MODELS:
        assert lookup(spec.name) == spec
        for alias in spec.aliases:
            assert lookup(alias).fp16_dense_tflops == spec.fp16_dense_tflops


# Strings as NVML (nvidia-smi, torch.cuda.get_device_name), npu-smi and cnmon print them.
@pytest.mark.parametrize(
    ("reported", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe 80GB"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL 94GB"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 SXM4 80GB"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 SXM4 40GB"),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100 PCIe 40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100 PCIe 80GB"),
        ("NVIDIA A800-SXM4-80GB", "NVIDIA A800 SXM4 80GB"),
        ("NVIDIA A800 80GB PCIe", "NVIDIA A800 PCIe 80GB"),
        ("NVIDIA H800", "NVIDIA H800 SXM5 80GB"),
        ("NVIDIA H800 PCIe", "NVIDIA H800 PCIe 80GB"),
        ("NVIDIA H20", "NVIDIA H20"),
        ("NVIDIA H200", "NVIDIA H200 SXM 141GB"),
        ("NVIDIA H200 NVL", "NVIDIA H200 NVL 141GB"),
        ("NVIDIA B200", "NVIDIA B200"),
        ("NVIDIA L40S", "NVIDIA L40S"),
        ("NVIDIA L40", "NVIDIA L40"),
        ("NVIDIA L20", "NVIDIA L20"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("Tesla V100-SXM2-32GB", "NVIDIA V100 SXM2 32GB"),
        ("Tesla V100-SXM2-16GB", "NVIDIA V100 SXM2 16GB"),
        ("Tesla V100-PCIE-32GB", "NVIDIA V100 PCIe 32GB"),
        ("Tesla T4", "NVIDIA T4"),
        ("NVIDIA A10", "NVIDIA A10"),
        ("NVIDIA A30", "NVIDIA A30"),
        ("NVIDIA A40", "NVIDIA A40"),
        ("910A", "Huawei Ascend 910A"),
        ("Ascend910A", "Huawei Ascend 910A"),
        ("MLU370-X8", "Cambricon MLU370-X8"),
    ],
)
def test_reported_names_find_their_entry(reported: str, entry: str) -> None:
    spec = lookup(reported)
    assert spec is not None, reported
    assert spec.name == entry
    assert lookup(reported.upper()) == spec
    assert lookup(reported.lower()) == spec
    assert lookup(f"  {reported.replace(' ', '_')}  ") == spec


def test_form_factor_picks_the_figure() -> None:
    sxm, pcie, nvl = (lookup(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "H100 NVL"))
    assert len({sxm.fp16_dense_tflops, pcie.fp16_dense_tflops, nvl.fp16_dense_tflops}) == 3
    assert (
        lookup("Tesla V100-SXM2-16GB").fp16_dense_tflops
        > lookup("Tesla V100-PCIE-16GB").fp16_dense_tflops
    )


def test_memory_size_is_ignored_only_where_it_does_not_change_the_figure() -> None:
    # A100 80GB and 40GB share one figure: an unlisted spelling still resolves, memory kept.
    assert lookup("NVIDIA A100 SXM4 80G").name == "NVIDIA A100 SXM4 80GB"
    assert lookup("A100 PCIe 40 GB").fp16_dense_tflops == lookup("A100-PCIE-40GB").fp16_dense_tflops
    assert lookup("NVIDIA H100 PCIe 80GB") == lookup("NVIDIA H100 PCIe")
    # For the H100 "80GB HBM3" is what marks the SXM part; without a form factor the name is
    # ambiguous between 989.4 and 756.5, so the table does not guess.
    assert lookup("NVIDIA H100") is None
    assert lookup("NVIDIA H100 HBM3") is None


@pytest.mark.parametrize(
    "reported",
    [
        "910B",  # npu-smi, older drivers
        "910B3",  # npu-smi
        "Ascend910B3",  # CANN SoC name
        "Ascend910B4-1",
        "310P3",
        "NVIDIA GeForce RTX 4090 D",  # China-market 4090 D: fewer SMs
        "NVIDIA A10G",
        "NVIDIA GH200 480GB",
        "MLU370-S4",
    ],
)
def test_models_without_a_sourced_figure_are_unknown(reported: str) -> None:
    assert lookup(reported) is None


def test_910b_is_not_mistaken_for_the_original_910() -> None:
    assert lookup("910A") is not None
    assert lookup("910") is None
    assert lookup("910B") is None
    assert lookup("Ascend 910B") is None
    assert lookup("Ascend910") is None  # an A3 host's dual-die chip, not the original 910


@pytest.mark.parametrize("bad", ["", "   ", "--", "NVIDIA", "Huawei Ascend"])
def test_a_name_without_model_tokens_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="no model tokens"):
        lookup(bad)


def test_a_non_string_name_is_an_error() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        lookup(None)  # type: ignore[arg-type]


def test_an_alias_meaning_two_figures_is_refused_when_the_table_is_built() -> None:
    a = ModelSpec("X1 SXM", "NVIDIA", False, 100.0, 80, "doc https://example.org/x", ("X1",))
    b = ModelSpec("X1 PCIe", "NVIDIA", False, 80.0, 80, "doc https://example.org/x", ("X1",))
    with pytest.raises(ValueError, match="ambiguous"):
        accelerators._index([a, b], memory_free_only=False)


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("name", " ", "name is empty"),
        ("vendor", "", "vendor is empty"),
        ("domestic", 1, "domestic must be a bool"),
        ("fp16_dense_tflops", 0.0, "positive TFLOPS"),
        ("fp16_dense_tflops", float("nan"), "positive TFLOPS"),
        ("fp16_dense_tflops", "312", "positive TFLOPS"),
        ("memory_gb", 0, "memory_gb must be positive"),
        ("source", "NVIDIA A100 datasheet", "cite a document with its URL"),
        ("aliases", ["A100"], "tuple of strings"),
    ],
)
def test_a_malformed_entry_is_refused(field: str, value: object, complaint: str) -> None:
    good = {
        "name": "X1",
        "vendor": "NVIDIA",
        "domestic": False,
        "fp16_dense_tflops": 100.0,
        "memory_gb": 80,
        "source": "X1 datasheet, https://example.org/x1.pdf",
        "aliases": ("X1",),
    }
    ModelSpec(**good)
    with pytest.raises(ValueError, match=complaint):
        ModelSpec(**{**good, field: value})


# (entry, SMs, boost clock MHz from the architecture whitepaper or datasheet, compute capability)
KNOWN_AT_BOOST_CLOCK = [
    ("NVIDIA V100 SXM2 32GB", 80, 1530, (7, 0)),
    ("NVIDIA V100 PCIe 32GB", 80, 1380, (7, 0)),
    ("NVIDIA T4", 40, 1590, (7, 5)),
    ("NVIDIA A100 SXM4 80GB", 108, 1410, (8, 0)),
    ("NVIDIA A30", 56, 1440, (8, 0)),
    ("NVIDIA A10", 72, 1695, (8, 6)),
    ("NVIDIA A40", 84, 1740, (8, 6)),
    ("NVIDIA GeForce RTX 4090", 128, 2520, (8, 9)),
    ("NVIDIA L4", 58, 2040, (8, 9)),
    ("NVIDIA L40S", 142, 2520, (8, 9)),
]


@pytest.mark.parametrize(("entry", "sms", "mhz", "cc"), KNOWN_AT_BOOST_CLOCK)
def test_estimate_reproduces_the_table_within_two_percent(
    entry: str, sms: int, mhz: int, cc: tuple[int, int]
) -> None:
    table = lookup(entry).fp16_dense_tflops
    estimate = estimate_fp16_tflops("NVIDIA", sms, mhz, cc)
    assert estimate == pytest.approx(table, rel=0.02)


@pytest.mark.parametrize(
    ("entry", "sms", "nvml_max_mhz"),
    [("NVIDIA H100 SXM5 80GB", 132, 1980), ("NVIDIA H100 PCIe 80GB", 114, 1755)],
)
def test_hopper_estimate_from_nvml_max_clock_is_an_upper_bound(
    entry: str, sms: int, nvml_max_mhz: int
) -> None:
    # NVIDIA rates Hopper's tensor figures below the maximum boost clock NVML reports.
    table = lookup(entry).fp16_dense_tflops
    estimate = estimate_fp16_tflops("NVIDIA", sms, nvml_max_mhz, (9, 0))
    assert table < estimate < table * 1.10


def test_a100_example_from_the_brief() -> None:
    assert estimate_fp16_tflops("NVIDIA", 108, 1410, (8, 0)) == pytest.approx(311.9, abs=0.1)


@pytest.mark.parametrize(
    ("vendor", "sms", "mhz", "cc"),
    [
        ("Hygon", 32, 1800, (8, 0)),  # no published per-unit rate for this vendor
        ("Huawei", None, 1800, None),
        ("NVIDIA", None, 1410, (8, 0)),
        ("NVIDIA", 108, None, (8, 0)),
        ("NVIDIA", 108, 1410, None),
        ("NVIDIA", 148, 1965, (10, 0)),  # Blackwell: no published per-SM rate
    ],
)
def test_estimate_is_none_without_what_it_needs(vendor, sms, mhz, cc) -> None:
    assert estimate_fp16_tflops(vendor, sms, mhz, cc) is None


@pytest.mark.parametrize(("sms", "mhz"), [(0, 1410), (-1, 1410), (108, 0), (108, float("nan"))])
def test_estimate_rejects_impossible_sm_data(sms: int, mhz: float) -> None:
    with pytest.raises(ValueError, match=r"sm_count|sm_clock_max_mhz"):
        estimate_fp16_tflops("NVIDIA", sms, mhz, (8, 0))


def test_fp16_peak_prefers_the_table() -> None:
    peak = fp16_peak("NVIDIA H100 PCIe", "NVIDIA", sm_count=114, sm_clock_max_mhz=1755,
                     compute_capability=(9, 0))  # fmt: skip
    spec = lookup("NVIDIA H100 PCIe")
    assert peak.tflops == spec.fp16_dense_tflops
    assert not peak.estimated
    assert peak.source == spec.source
    assert not peak.domestic


def test_fp16_peak_estimates_an_unknown_nvidia_model_and_says_so() -> None:
    peak = fp16_peak("NVIDIA GH200 480GB", "NVIDIA", 132, 1980.0, (9, 0))
    assert peak.estimated
    assert peak.tflops == estimate_fp16_tflops("NVIDIA", 132, 1980.0, (9, 0))
    assert "ESTIMATE" in peak.source and "132 compute units" in peak.source
    assert URL.search(peak.source)


def test_fp16_peak_of_an_unknown_model_without_sm_data_is_none() -> None:
    peak = fp16_peak("NVIDIA Hypothetical X9", "NVIDIA")
    assert peak.tflops is None
    assert not peak.estimated
    assert "NVIDIA Hypothetical X9" in peak.source


def test_fp16_peak_of_an_unsourced_domestic_model_is_none_but_domestic() -> None:
    peak = fp16_peak("910B3", "Huawei")
    assert peak.tflops is None
    assert peak.domestic


@pytest.mark.parametrize(
    "vendor",
    ["Huawei", "HUAWEI Technologies", "Ascend", "Hygon", "海光", "Cambricon", "寒武纪",
     "Kunlunxin", "Enflame", "Iluvatar CoreX", "MetaX", "Moore Threads", "Moore-Threads",
     "Biren", "壁仞科技"],
)  # fmt: skip
def test_domestic_vendors(vendor: str) -> None:
    assert is_domestic(vendor)


@pytest.mark.parametrize("vendor", ["NVIDIA", "AMD", "Intel", "Google"])
def test_foreign_vendors(vendor: str) -> None:
    assert not is_domestic(vendor)


def test_empty_vendor_is_an_error() -> None:
    with pytest.raises(ValueError, match="vendor is empty"):
        is_domestic("  ")


@given(st.text())
def test_normalisation_is_idempotent(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once


ASCII_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_/")


@given(ASCII_NAME)
def test_normalisation_ignores_case(name: str) -> None:
    assert normalise_name(name.upper()) == normalise_name(name.lower()) == normalise_name(name)


@given(ASCII_NAME, st.sampled_from([" ", "-", "_", "/", "  "]))
def test_normalisation_ignores_separator_style(name: str, separator: str) -> None:
    assert normalise_name(re.sub(r"[ \-_/]", separator, name)) == normalise_name(name)


@given(st.sampled_from([a for s in MODELS for a in s.aliases]), st.data())
def test_lookup_ignores_case_of_any_alias(alias: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(alias), max_size=len(alias)))
    mixed = "".join(c.upper() if f else c.lower() for c, f in zip(alias, flips, strict=True))
    assert lookup(mixed) == lookup(alias)


def test_da_vinci_estimate_reproduces_the_ascend_910_figure_and_flags_910b() -> None:
    # 32 AI cores x 8192 FLOPs/clock x ~1 GHz: Huawei states 256 TFLOPS for the 910.
    table = lookup("Ascend910A")
    assert table is not None
    estimate = estimate_fp16_tflops("Huawei", 32, 1000.0, None)
    assert estimate is not None
    assert 1.0 <= estimate / table.fp16_dense_tflops <= 1.03
    peak = fp16_peak("Ascend910B3", "Huawei", 20, 1800.0)
    assert peak.estimated and peak.domestic
    assert peak.tflops == estimate_fp16_tflops("Huawei", 20, 1800.0, None)
    assert "Da Vinci" in peak.source
