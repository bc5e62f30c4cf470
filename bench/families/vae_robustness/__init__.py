"""VAE robustness (issue 12, first part): VAEs as first-class generative models, and attacks on them.

- ``vae.py``: the ``conv-vae`` architecture (Bernoulli decoder for MNIST, Gaussian for CIFAR-10) and its
  ELBO with common random numbers;
- ``recipe.py``: the ``vae`` recipe (VAE, beta-VAE, beta-TCVAE);
- ``attacks.py``: the ``vae-attack`` family (maximum damage, latent, ELBO-lowering PGD);
- ``margins.py``: the ``vae-margin`` family (r-robustness probability, first-order and empirical margins);
- ``ibp.py``, ``crown.py`` and ``certified.py``: interval and linear (CROWN) bounds and the ``vae-certified-elbo``
  family;
- ``lipschitz.py``: the ``lipschitz-vae`` architecture and the ``vae-lipschitz-margin`` certificate;
- ``utility.py``: whether a VAE is collapsed (scale-aware active dimensions, reconstruction spread), and the
  spread of the 8-draw ELBO the certificates bound;
- ``report.py`` and ``cli.py``: `bench vae report`, the MNIST reproduction report.

Nothing here treats a VAE as a classifier: no labels are used, and no accuracy is reported.
"""


def register() -> None:
    """Register the architecture, the recipe and the attack family."""
    from bench.families.vae_robustness import attacks, certified, lipschitz, margins, recipe, vae  # noqa: F401
