"""CaCoVID (arXiv 2602.01649): the learned contribution-aware compression policy and its RL training parts.

Pure torch. ``policy`` (network, save/load), ``sampler`` (rollouts), ``objective`` (loss, advantages,
retention adaptation), ``scorer`` (the stage-2 ``TokenScorer`` over a TokenSet).
"""
