"""Registry: names, spec strings typed by each method's Params, loud failures listing the choices."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from compression.registry import build_method, list_methods, parse_spec, register_method


def test_list_methods_when_asked_per_stage_then_lists_the_issue_methods():
    assert set(list_methods(1)) == {"none", "uniform", "random", "tome", "dtd", "adatp-local", "vtm"}
    assert set(list_methods(2)) == {"uniform", "random", "fastv", "visionzip", "divprune", "adatp", "cacovid",
                                  "recent"}
    assert list_methods() == sorted(set(list_methods(1)) | set(list_methods(2)))


def test_parse_spec_when_given_keys_then_splits_name_and_raw_values():
    assert parse_spec("adatp:lam=0.25, tau=0.9") == ("adatp", {"lam": "0.25", "tau": "0.9"})
    assert parse_spec("none") == ("none", {})


def test_build_method_when_spec_has_values_then_they_are_typed_from_params():
    method = build_method("vtm:gamma=4,target=center,sample=true,seed=3")
    assert method.params.gamma == 4.0 and isinstance(method.params.gamma, float)
    assert method.params.target == "center" and method.params.sample is True and method.params.seed == 3


def test_build_method_when_keys_absent_then_defaults_are_kept():
    assert build_method("uniform").params.ratio == 0.5
    assert build_method("adatp-local:dedup_tau=0.8").params.dedup_tau == 0.8
    assert build_method("adatp-local:dedup=first").params.dedup == "first"


def test_convert_when_optional_then_none_is_read_as_none():
    from compression.registry import _convert

    assert _convert("k", "none", float | None) is None and _convert("k", "0.5", float | None) == 0.5


def test_build_method_when_name_unknown_then_error_lists_the_choices():
    with pytest.raises(ValueError, match="unknown compression method 'nope'.*adatp.*vtm"):
        build_method("nope:x=1")


def test_build_method_when_key_unknown_then_error_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown parameter.*colour.*valid: ratio, mode"):
        build_method("uniform:colour=red")


def test_build_method_when_value_has_wrong_type_or_choice_then_raises():
    with pytest.raises(ValueError, match="ratio"):
        build_method("tome:ratio=half")
    with pytest.raises(ValueError, match="naive"):
        build_method("vtm:target=sideways")
    with pytest.raises(ValueError, match="key=value"):
        build_method("tome:ratio")


def test_build_method_when_stage_does_not_match_then_raises_listing_that_stage():
    with pytest.raises(ValueError, match="not a stage-2 method.*fastv"):
        build_method("tome", stage=2)


def test_register_method_when_name_is_taken_then_raises():
    @dataclass(frozen=True)
    class Params:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("tome", stage=1)(type("Dup", (), {"Params": Params}))


def test_register_method_when_stage_invalid_then_raises():
    with pytest.raises(ValueError, match="stage"):
        register_method("x-bad-stage", stage=3)
