"""Evaluating a trained diffusion model: sample quality (FID, IS, KID), likelihood (bits/dim),
progressive lossy compression (rate-distortion), and the book's table of reproduced claims.

The ablation models behind the claims table are defined once, in :func:`ablation_configs`, so that
the chapter that trains and discusses them (chapter 7) and the chapter that tabulates them
(chapter 8) share the same cached models through ``train.get_trained``.
"""
from __future__ import annotations

from . import train as _train

# ---------------------------------------------------------------------- the ablation models
ABLATION_STEPS = 600  # training updates of every ablation model (the same for all, so they compare)
ABLATION_BATCH = 32  # batch size of every ablation model (small, so that all of them train in minutes on a CPU)

ABLATIONS = {
    # name: (changes to book_config("digits"), one-line meaning)
    "eps-simple": (dict(),
                   "eps prediction, L_simple, fixed variance beta~_t (Ho et al.'s best-sample model)"),
    "eps-vlb-fixed": (dict(loss_type="vlb"),
                      "eps prediction trained on the true bound L_vlb, fixed variance beta~_t"),
    "mu-simple": (dict(mean_type="mu"),
                  "predicts the posterior mean mu~ with a squared error on mu~, fixed variance"),
    "mu-vlb-fixed": (dict(mean_type="mu", loss_type="vlb"),
                     "predicts mu~, trained on the true bound L_vlb, fixed variance"),
    "hybrid-learned": (dict(var_type="learned_range", loss_type="hybrid"),
                       "eps prediction, learned (interpolated) variance, L_hybrid = L_simple + 0.001 L_vlb"),
    "vlb-learned": (dict(var_type="learned_range", loss_type="vlb", timestep_sampler="loss-second-moment"),
                    "eps prediction, learned variance, L_vlb with importance-sampled t"),
    "cosine-simple": (dict(schedule="cosine"),
                      "as eps-simple but with the cosine schedule of Nichol & Dhariwal"),
}

# which ablation models each claim compares: (claim, models)
CLAIM_MODELS = {
    "a": ("eps-simple", "eps-vlb-fixed"),
    "b": ("mu-simple", "mu-vlb-fixed", "eps-simple"),
    "c": ("hybrid-learned", "vlb-learned", "eps-simple"),
    "d": ("cosine-simple", "eps-simple"),
    "e": ("hybrid-learned", "eps-simple"),
}


def ablation_configs(steps: int = ABLATION_STEPS, batch_size: int = ABLATION_BATCH) -> dict[str, _train.TrainConfig]:
    """The named training configurations behind the reproduced claims (a)-(e), on 8x8 ``digits``.

    Every configuration is ``train.book_config("digits", steps=steps, batch_size=batch_size,
    **changes)``: the ``cpu-digits`` U-Net, T = 1000, Adam lr 1e-3, EMA 0.999, the same seed,
    ``steps`` updates (default :data:`ABLATION_STEPS`) of ``batch_size`` examples (default
    :data:`ABLATION_BATCH`), linear schedule unless noted. Only the
    fields in ``changes`` differ, so two models compare exactly one choice. Train or load each with
    ``train.get_trained(cfg)`` (cached on disk by configuration: the book trains each once)::

        cfgs = evaluation.ablation_configs()
        runs = {name: train.get_trained(cfg) for name, cfg in cfgs.items()}

    The models (see :data:`ABLATIONS` for the one-line meanings):

    ========================  ==============================================================
    ``eps-simple``            eps, ``fixed_small``, L_simple (Ho et al. Table 2, last row)
    ``eps-vlb-fixed``         eps, ``fixed_small``, L_vlb (Table 2, "L, fixed isotropic Sigma")
    ``mu-simple``             mu~, ``fixed_small``, squared error on mu~ (Table 2, "unstable")
    ``mu-vlb-fixed``          mu~, ``fixed_small``, L_vlb (Table 2, mu~ row that trains)
    ``hybrid-learned``        eps, ``learned_range``, L_hybrid (Nichol & Dhariwal)
    ``vlb-learned``           eps, ``learned_range``, L_vlb, importance-sampled t
    ``cosine-simple``         eps, ``fixed_small``, L_simple, cosine schedule
    ========================  ==============================================================

    Which models each claim compares (:data:`CLAIM_MODELS`):
    (a) eps + L_simple gives better samples (FID) than the true bound with a fixed variance:
    ``eps-simple`` vs ``eps-vlb-fixed``; (b) predicting mu~ with a squared error is unstable:
    ``mu-simple`` vs ``mu-vlb-fixed`` (and ``eps-simple``); (c) L_hybrid and L_vlb give a lower NLL
    than L_simple: ``hybrid-learned``, ``vlb-learned`` vs ``eps-simple``; (d) the cosine schedule
    beats the linear one at low resolution: ``cosine-simple`` vs ``eps-simple``; (e) learned
    variances keep their FID with fewer sampling steps: ``hybrid-learned`` vs ``eps-simple`` sampled
    with all T steps and with a respaced few.

    :param steps: training updates of every model (the same for all).
    :param batch_size: examples per update (the same for all).
    :return: dict name -> ``TrainConfig``, in the order above.
    """
    return {name: _train.book_config("digits", steps=steps, batch_size=batch_size, **changes)
            for name, (changes, _meaning) in ABLATIONS.items()}
