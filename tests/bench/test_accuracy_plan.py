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


# ---------------------------------------------------------------- the honest yardstick's statistics and report

def test_mcnemar_when_answers_differ_only_by_chance_then_p_is_large_and_small_when_one_always_wins() -> None:
    from bench.evalkit import mcnemar_p

    assert mcnemar_p([True, False] * 20, [False, True] * 20) == 1.0
    assert mcnemar_p([True] * 30, [False] * 30) < 1e-6
    # 10 vs 0 discordant pairs: 2 * 0.5 ** 10
    assert abs(mcnemar_p([True] * 10 + [True] * 5, [False] * 10 + [True] * 5) - 2 / 1024) < 1e-12


def test_contribution_kept_when_method_halfway_between_blind_and_full_then_half_with_interval() -> None:
    import numpy as np

    from bench.evalkit import contribution_kept, interval

    rng = np.random.default_rng(0)
    full = rng.random(2000) < 0.9
    blind = rng.random(2000) < 0.3
    method = np.where(rng.random(2000) < 0.5, full, blind)
    kept, lo, hi = contribution_kept(list(method), list(full), list(blind), reps=300)
    assert 0.4 < kept < 0.6 and lo < kept < hi and hi - lo < 0.15
    lo_acc, hi_acc = interval([True] * 450 + [False] * 150)
    assert lo_acc < 0.75 < hi_acc and hi_acc - lo_acc < 0.08, "600 questions give +-4 points"


def test_accuracy_run_when_tiny_model_then_controls_and_final_line_in_the_same_run(tmp_path) -> None:
    from bench.accuracy import AccuracyConfig, final_line, run

    cfg = AccuracyConfig(model="tiny-random", clips=3, methods=("divprune",), retentions=(0.5,),
                         out_dir=str(tmp_path), frame_size=48)
    report = run(cfg)
    line = final_line(report, str(tmp_path))
    for key in ("uncompressed_accuracy", "blind_accuracy", "other_clip_accuracy", "chance", "questions", "per_type"):
        assert key in line, key
    assert [c["method"] for c in report["controls"]] == ["uncompressed", "zero visual tokens", "another clip's tokens"]
    questions = line["questions"]
    assert questions > 5 and all(c["questions"] == questions for c in report["controls"])
    row = report["results"][0]
    assert row["questions"] == questions and not row["error"], "methods are scored on the same questions"
    assert 0 <= row["p_vs_uncompressed"] <= 1 and len(row["interval"]) == 2
    assert report["controls"][1]["tokens_kept"] == 0, "the blind row sees no visual token"
    assert 0.25 <= line["chance"] <= 0.5
