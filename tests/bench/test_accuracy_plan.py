"""The accuracy benchmark picks up the learned methods' trained files when they are shipped."""

from __future__ import annotations

from bench.accuracy import AccuracyConfig, learned_artefacts


def test_learned_artefacts_when_files_exist_gives_their_spec_parameters(tmp_path):
    (tmp_path / "cacovid-vidmem-tiny.pt").write_bytes(b"x")
    (tmp_path / "vtm-saliency-vidmem-tiny.pt").write_bytes(b"x")

    found = learned_artefacts(AccuracyConfig(model="models/vidmem-tiny", policies_dir=str(tmp_path)))

    assert found == {
        "cacovid": f"policy_path={tmp_path / 'cacovid-vidmem-tiny.pt'}",
        "vtm-learnable": f"target=learnable,saliency_path={tmp_path / 'vtm-saliency-vidmem-tiny.pt'}",
    }


def test_learned_artefacts_when_nothing_is_trained_is_empty(tmp_path):
    assert learned_artefacts(AccuracyConfig(policies_dir=str(tmp_path))) == {}
