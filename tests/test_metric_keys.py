"""The key grammar: spelling, strict parsing, families and comprehensive keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import metric_keys
from labeled import ComprehensiveMetricsBuilder, Job, comprehensive_gpu_name, normalise
from metric_keys import (
    BOOKKEEPING,
    COMPREHENSIVE,
    FAMILIES,
    LABELED,
    LEGACY,
    OTHER,
    TIME,
    ComprehensiveKey,
    InvalidKey,
    classify,
    escape_label_value,
    format_key,
    parse_comprehensive,
    parse_key,
)

metric_names = st.from_regex(r"\A[a-zA-Z_:][a-zA-Z0-9_:]{0,30}\Z")
label_names = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,20}\Z").filter(
    lambda name: not name.startswith("__")
)
# Values rich in the characters that break naive parsers.
tricky_text = st.text(alphabet=st.sampled_from('a_1,}{="\\\n n'), max_size=12)
label_values = st.one_of(st.text(max_size=20), tricky_text)
label_sets = st.dictionaries(label_names, label_values, max_size=6)
# Text built from the grammar's own punctuation finds more edge cases than
# uniformly random characters.
key_like_text = st.text(alphabet=st.sampled_from('ab_:{}=",\\n\n1 '), max_size=40)


# Spelling labeled keys


def test_format_sorts_labels_and_escapes_values() -> None:
    key = format_key("tao_job_total", {"b": "x", "a": 'say "hi"\\\n'})
    assert key == 'tao_job_total{a="say \\"hi\\"\\\\\\n",b="x"}'


def test_format_without_labels_is_the_bare_name() -> None:
    assert format_key("time_lapsed_today", {}) == "time_lapsed_today"


def test_escape_matches_the_text_format() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("tab\tand,}") == "tab\tand,}"


@pytest.mark.parametrize(
    ("name", "labels", "problem"),
    [
        ("1abc", {}, "invalid metric name '1abc'"),
        ("a-b", {}, "invalid metric name"),
        ("abc\n", {}, "invalid metric name"),
        ("", {}, "invalid metric name"),
        ("abc", {"1x": "v"}, "invalid label name '1x'"),
        ("abc", {"a:b": "v"}, "invalid label name"),
        ("abc", {"x\n": "v"}, "invalid label name"),
        ("abc", {"__name__": "v"}, "reserved"),
        ("abc", {"x": 1}, "non-string value"),
    ],
)
def test_format_refuses_what_prometheus_refuses(name, labels, problem) -> None:
    with pytest.raises(InvalidKey, match=problem):
        format_key(name, labels)


# Parsing labeled keys


@pytest.mark.parametrize(
    ("key", "name", "labels"),
    [
        ("total_action_train_pass", "total_action_train_pass", {}),
        ("a:b", "a:b", {}),
        ('m{a="x,y"}', "m", {"a": "x,y"}),
        ('m{a="}",b="{"}', "m", {"a": "}", "b": "{"}),
        ('m{a="\\",b=\\"x"}', "m", {"a": '",b="x'}),
        ('m{a="\\\\",b=""}', "m", {"a": "\\", "b": ""}),
        ('m{a="line\\nnext"}', "m", {"a": "line\nnext"}),
        ('m{a="5.3.0",b="$x"}', "m", {"a": "5.3.0", "b": "$x"}),
    ],
)
def test_parse_reads_values_holding_separators(key, name, labels) -> None:
    assert parse_key(key) == (name, labels)
    assert format_key(name, labels) == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ('m{b="1"', "missing closing brace"),
        ('m{b="1"}x', "text after the closing brace"),
        ('m{b="1",a="2"}', "label 'a' is not sorted by name"),
        ('m{b="1",b="2"}', "label 'b' is repeated"),
        ("m{}", "empty label set"),
        ("m{b=1}", 'expected label="value" at offset 2'),
        ('m{b="1",}', 'expected label="value" at offset 8'),
        ('m{b="1";c="2"}', "expected ',' or '}' at offset 7"),
        ('m{b="\\x"}', "invalid escape '\\x' at offset 5"),
        ('m{b="\\', "unterminated label value"),
        ('m{b="x\ny"}', "raw newline"),
        ('m{b="open', "unterminated label value"),
        ('m{__b="1"}', "reserved"),
        ('m{b c="1"}', "invalid label name 'b c'"),
        ('1m{b="1"}', "invalid metric name '1m'"),
        ('{b="1"}', "invalid metric name ''"),
        ("name\n", "invalid metric name"),
        ("two words", "invalid metric name"),
    ],
)
def test_parse_says_what_is_wrong(key, problem) -> None:
    with pytest.raises(InvalidKey, match=re.escape(problem)):
        parse_key(key)


@given(metric_names, label_sets)
def test_parse_inverts_format(name: str, labels: dict[str, str]) -> None:
    assert parse_key(format_key(name, labels)) == (name, labels)


@given(metric_names, label_sets.filter(bool))
def test_prometheus_reads_our_keys_as_we_do(name: str, labels: dict[str, str]) -> None:
    key = format_key(name, labels)
    families = list(text_string_to_metric_families(f"{key} 1\n"))
    samples = [sample for family in families for sample in family.samples]
    assert [(s.name, s.labels) for s in samples] == [(name, labels)]


@given(st.one_of(key_like_text, st.text(max_size=60)))
@example('m{a="1"}')
@example('m{a="\\n"}')
@settings(max_examples=400)
def test_any_text_parses_to_its_own_spelling_or_is_refused(text: str) -> None:
    try:
        name, labels = parse_key(text)
    except InvalidKey:
        return
    assert format_key(name, labels) == text


def accepts(check, key: str) -> bool:
    try:
        check(key)
    except InvalidKey:
        return False
    return True


@given(
    st.one_of(
        key_like_text,
        st.text(max_size=60),
        st.builds(format_key, metric_names, label_sets.filter(bool)),
    )
)
@example('m{__a="1"}')
@example('m{b="1",a="2"}')
@settings(max_examples=400)
def test_check_key_accepts_exactly_what_parse_key_reads(text: str) -> None:
    assert accepts(metric_keys.check_key, text) == accepts(parse_key, text)


@given(metric_names, label_sets.filter(bool), st.integers(0, 200), key_like_text)
def test_damaged_keys_never_raise_anything_else(name, labels, cut, noise) -> None:
    key = format_key(name, labels)
    damaged = key[:cut] + noise + key[cut:]
    try:
        parsed = parse_key(damaged)
    except InvalidKey:
        return
    assert format_key(*parsed) == damaged


# Families


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("_id", BOOKKEEPING),
        ("name", BOOKKEEPING),
        ("last_updated", BOOKKEEPING),
        ("time_lapsed_today", TIME),
        ('tao_job_total{tao_action="train"}', LABELED),
        ("total_action_train_pass", LEGACY),
        ("total_action_dataset_convert_fail", LEGACY),
        ("version_5_3_0_action_train", LEGACY),
        ("network_visual_changenet_action_evaluate", LEGACY),
        ("gpu_nvidia_a100_sxm4_80gb_action_train", LEGACY),
        (
            "network_resnet50_action_train_version_5_3_0_status_pass_gpu_1_NVIDIA_A100_1",
            COMPREHENSIVE,
        ),
        ("network_dino_action_train_version_6_0_0_status_fail_gpu_0_", COMPREHENSIVE),
        ("total_action_train_maybe", OTHER),
        ("uptime_seconds", OTHER),
        ("total_action_train_pass\n", OTHER),
        ("", OTHER),
    ],
)
def test_classify(key: str, family: str) -> None:
    assert classify(key) == family


@given(st.one_of(key_like_text, st.text(max_size=80)))
def test_classify_takes_any_text(text: str) -> None:
    assert classify(text) in FAMILIES


# Comprehensive keys


def test_comprehensive_example() -> None:
    key = "network_resnet50_action_train_version_5_3_0_status_pass_gpu_1_NVIDIA_A100_1"
    assert parse_comprehensive(key) == ComprehensiveKey(
        "resnet50", "train", "5_3_0", "pass", 1, (("NVIDIA_A100", 1),)
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "network_visual_changenet_action_dataset_convert_version_5_5_0"
            "_status_fail_gpu_8_NVIDIA_GEFORCE_RTX_4090_8",
            ComprehensiveKey(
                "visual_changenet",
                "dataset_convert",
                "5_5_0",
                "fail",
                8,
                (("NVIDIA_GEFORCE_RTX_4090", 8),),
            ),
        ),
        (
            "network_mask_grounding_dino_action_train_version_6_0_0_status_pass"
            "_gpu_3_NVIDIA_A100_SXM4_80GB_2_NVIDIA_H100_80GB_HBM3_1",
            ComprehensiveKey(
                "mask_grounding_dino",
                "train",
                "6_0_0",
                "pass",
                3,
                (("NVIDIA_A100_SXM4_80GB", 2), ("NVIDIA_H100_80GB_HBM3", 1)),
            ),
        ),
        (
            "network_dino_action_export_version_5_0_0_status_pass_gpu_0_",
            ComprehensiveKey("dino", "export", "5_0_0", "pass", 0, ()),
        ),
        (
            # (A, 1_1_B) is refused: GPU names are written in ascending order.
            "network_n_action_a_version_v_status_pass_gpu_2_A_1_1_B_1",
            ComprehensiveKey("n", "a", "v", "pass", 2, (("A_1", 1), ("B", 1))),
        ),
    ],
)
def test_comprehensive_names_with_underscores_and_numbers(key, expected) -> None:
    assert parse_comprehensive(key) == expected


def test_ambiguous_head_is_reported_with_its_readings() -> None:
    key = "network_a_action_b_action_c_version_1_status_pass_gpu_1_X_1"
    with pytest.raises(InvalidKey) as caught:
        parse_comprehensive(key)
    message = str(caught.value)
    assert "ambiguous" in message
    assert "network=a action=b_action_c version=1" in message
    assert "network=a_action_b action=c version=1" in message


def test_ambiguous_gpu_list_is_reported_with_its_readings() -> None:
    key = "network_n_action_a_version_v_status_pass_gpu_2_A_1_B_1_C_1"
    with pytest.raises(InvalidKey) as caught:
        parse_comprehensive(key)
    assert "gpus=[A x1, B_1_C x1]" in str(caught.value)
    assert "gpus=[A_1_B x1, C x1]" in str(caught.value)


def test_many_readings_are_cut_short() -> None:
    key = "network_n_action_a_version_v_status_pass_gpu_30_" + "_".join(["1"] * 200)
    with pytest.raises(InvalidKey, match=r"ambiguous.* and more$"):
        parse_comprehensive(key)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("total_action_train_pass", "is not a comprehensive key"),
        ("network_n_action_a_version_v_status_pass_gpu_2_A_1", "cannot be read"),
        ("network_n_action_a_version_v_status_maybe_gpu_1_A_1", "cannot be read"),
        ("network_n_action_a_version_v_status_pass_gpu_1_", "cannot be read"),
        ("network_n_action_a_version_v_status_pass_gpu_" + "9" * 5000, "cannot be"),
        ("network__action_a_version_v_status_pass_gpu_0_", "cannot be read"),
    ],
)
def test_unreadable_comprehensive_keys(key: str, problem: str) -> None:
    with pytest.raises(InvalidKey, match=problem):
        parse_comprehensive(key)


@given(st.one_of(key_like_text, st.text(max_size=80)))
def test_comprehensive_parser_only_raises_invalid_key(text: str) -> None:
    try:
        parse_comprehensive("network_" + text)
    except InvalidKey:
        pass


# Round trips through the builder that writes comprehensive keys.

NETWORKS = ["resnet50", "visual_changenet", "mask-grounding-dino", "OCRNet", "mal"]
ACTIONS = ["train", "dataset_convert", "gen_trt_engine", "evaluate"]
VERSIONS = ["5.3.0", "6.0.0-rc1", "5_5_0", "6"]
GPU_NAMES = [
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA GeForce RTX 4090",
    "NVIDIA RTX A6000",
    "NVIDIA H100 80GB HBM3",
    "Jetson AGX Orin",
    "NVIDIA L40S",
    "NVIDIA GH200 480GB",
    "Tesla T4",
]


def _job(network, action, version, gpus, success=True) -> Job:
    return Job(network, action, version, success, gpu=tuple(gpus))


def _expected(job: Job) -> ComprehensiveKey:
    counts: dict[str, int] = {}
    for gpu in job.gpu:
        name = comprehensive_gpu_name(gpu)
        counts[name] = counts.get(name, 0) + 1
    return ComprehensiveKey(
        normalise(job.network),
        normalise(job.action),
        normalise(job.version),
        "pass" if job.success else "fail",
        len(job.gpu),
        tuple(sorted(counts.items())),
    )


@given(
    st.sampled_from(NETWORKS),
    st.sampled_from(ACTIONS),
    st.sampled_from(VERSIONS),
    st.lists(st.sampled_from(GPU_NAMES), max_size=16),
    st.booleans(),
)
def test_realistic_keys_parse_back_to_their_parts(
    network, action, version, gpus, success
) -> None:
    job = _job(network, action, version, gpus, success)
    key = ComprehensiveMetricsBuilder().key(job)
    assert classify(key) == COMPREHENSIVE
    assert parse_comprehensive(key) == _expected(job)


words = st.text(alphabet=st.sampled_from("ab_1 .-"), min_size=1, max_size=8)


@given(words, words, words, st.lists(words, max_size=5), st.booleans())
@settings(max_examples=300)
def test_any_builder_key_parses_back_or_is_called_ambiguous(
    network, action, version, gpus, success
) -> None:
    job = _job(network, action, version, gpus, success)
    key = ComprehensiveMetricsBuilder().key(job)
    assert classify(key) == COMPREHENSIVE
    truth = _expected(job)
    try:
        parsed = parse_comprehensive(key)
    except InvalidKey as exc:
        message = str(exc)
        assert "ambiguous" in message
        gpus = ", ".join(f"{name} x{count}" for name, count in truth.gpus)
        reading = (
            f"network={truth.network} action={truth.action} version={truth.version} "
            f"status={truth.status} gpus=[{gpus}]"
        )
        assert reading in message or message.endswith(" and more")
        return
    assert parsed == truth


def test_fixed_words_early_in_a_key_do_not_confuse_the_parser() -> None:
    job = _job("a_status_pass_gpu_1_x", "b", "c", ["X"])
    key = ComprehensiveMetricsBuilder().key(job)
    assert parse_comprehensive(key) == _expected(job)


def test_grammar_module_exposes_its_constants() -> None:
    assert metric_keys.TIME_KEY == "time_lapsed_today"
    assert {"_id", "name", "last_updated"} == metric_keys.BOOKKEEPING_KEYS
