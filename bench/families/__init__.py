"""The family index: every method family, one package each, and what it provides, so that a look-up
imports only the family that holds a name and a family that fails to import breaks nothing else.

The core (cards, registry, tasks, metrics, run, store, board, CLI root) imports no family; it finds them
here, the one place a family is plugged in. Each package has ``register()``, which imports the modules
that register its entries into the core registries; ``provides`` must list exactly those entries (a test
compares them), and ``command`` names its `bench COMMAND ...` (sub-commands in its ``cli.py``, a typer
``app``). See docs/architecture.md, "Adding a method family".
"""
from bench.registry import Family

FAMILIES = (
    Family("bench.families.learned_sets", command="perturbation",
           summary="Learned perturbation sets (Wong & Kolter): statistics, samples, reproduction report.",
           provides={"threat family": ("learned-cvae", "learned-cvae-apgd", "learned-cvae-pgd", "learned-cvae-random",
                                       "learned-cvae-real-fit", "learned-cvae-real-grid", "learned-cvae-transfer",
                                       "latent-smoothing", "latent-smoothing-attack", "perturbed", "set-quality"),
                     "task": ("perturbation-set",),
                     "architecture": ("cvae-conv", "cvae-rectangle", "cvae-stn"),
                     "recipe": ("cvae", "cvae-adv", "cvae-adv-apgd", "cvae-aug", "cvae-smoothing",
                                "perturbation-aug")}),
    Family("bench.families.corruptions",
           provides={"threat family": ("corruptions", "ood"), "generated dataset": ("cifar10-c", "mnist-c")}),
    Family("bench.families.ood_to_id", command="ood2id",
           summary="OOD-to-ID mapping defences (Amich & Eshete): reproduction report.",
           provides={"task": ("translator",), "architecture": ("residual-unet",), "recipe": ("ood2id-translator",),
                     "composer": ("translate-then-classify",)}),
    Family("bench.families.vae_robustness", command="vae",
           summary="VAE robustness: margins, certified ELBO, reproduction report.",
           provides={"threat family": ("vae-attack", "vae-certified-elbo", "vae-lipschitz-margin", "vae-margin"),
                     "architecture": ("conv-vae", "lipschitz-vae"), "recipe": ("vae",)}),
    Family("bench.families.robust_training", command="robust-training",
           summary="Robust training recipes (TRADES, MART, ARMOR_D): reproduction report.",
           provides={"recipe": ("armor-alpha", "armor-kl", "mart", "trades")}),
)
