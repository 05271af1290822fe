"""Model configuration, the model registry and the shared model base class."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.spec import DataSpec
from ..errors import UsageError
from ..modules.likelihoods import LIKELIHOODS, default_likelihood
from ..modules.priors import PRIORS
from ..registry import Registry

MODELS: Registry = Registry("model")
#: Two-stochastic-layer variants by model name, used when ``latent_dim2`` > 0 (filled by
#: ``models.hierarchical``; a model without an entry does not offer a second layer).
TWO_LAYER: dict[str, type] = {}
#: Models that offer a learned conditional prior p(z|c) (``ModelConfig.conditional_prior``); filled
#: by the model modules.
CONDITIONAL_PRIOR: set[str] = set()
#: Variants trained on the codes of another trained model (M1+M2), by model name, used when
#: ``extra["features"]`` describes that model (filled by ``models.m1m2``; see ``vaekit.features``).
ON_FEATURES: dict[str, type] = {}
#: Options that only some models read, by ModelConfig field: the models that read it (filled by
#: the model modules); setting one away from its default for another model is refused.
MODEL_OPTIONS: dict[str, set[str]] = {"encoder": set(), "phases": set(), "critic_hidden": set(), "adversarial_weight": set(), "adaptive_contrast": set(),
                                      "critic_steps": set(), "gamma": set(), "equilibrium": set(), "margin": set()}
#: How an adversarial autoencoder's encoder draws its code (``ModelConfig.encoder``).
ENCODER_KINDS = ("gaussian", "deterministic")
#: How an adversarial autoencoder orders its updates (``ModelConfig.phases``).
AAE_PHASES = ("paper", "joint")
#: Gradient estimators of the IWAE bound (see ``ModelConfig.gradient_estimator``).
GRADIENT_ESTIMATORS = ("reparam", "dreg")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model, given its DataSpec.

    hidden: widths of the MLP hidden layers (encoder order; the decoder mirrors them), or the
        channels of the stride-2 conv layers; None picks a default for the architecture.
    likelihood: None picks one from the data kind (Bernoulli for [0, 1] data, else Gaussian).
    free_bits: minimum KL per latent dimension (nats, batch-averaged) below which the KL term
        gives no gradient (Kingma et al. 2016); 0 disables it.
    k: importance samples per example in the training bound of model "iwae" (unused by "vae").
    gradient_estimator: how model "iwae" estimates the bound's gradient: "reparam" (the plain
        reparameterisation gradient, as in Burda et al.) or "dreg" (doubly reparameterised
        gradients, Tucker et al. 2019: the same expectation with lower variance for the encoder,
        whose signal-to-noise ratio otherwise falls as k grows).
    latent_dim2: size of a second, top stochastic layer z2 (Burda et al. 2015's two-layer
        architecture: x -> z1 (latent_dim) -> z2 (latent_dim2), all conditionals diagonal
        Gaussians, p(z2) = N(0, I)); 0 (the default) means one stochastic layer.
    hidden2: widths of the MLPs between z1 and z2 (q(z2|z1) in this order, p(z1|z2) mirrored);
        None picks half of each ``hidden`` width (200,200 -> 100,100, the paper's sizes).
    conditional_prior: conditional models: a learned prior p(z|c) instead of N(0, I).
    alpha: semi-supervised models (M2): weight of the mean cross-entropy of each batch's labelled
        examples against the per-example bound (``models.m2``); Kingma et al. 2014's alpha =
        0.1 * N is 0.1 here, which learns slowly in short runs, hence the default 1.
    given: completion models (``models.completion``): which part of each training example is
        given, the rest to complete (``functional.masks.GIVEN_MODES``: "1", "2", "3" quadrants
        as in Sohn et al. 2015, "random" quadrants, "rect", "pixels"); None: "random" for
        images, "pixels" for vectors.
    prior: p(z), a name in ``modules.priors.PRIORS`` ("standard-normal", "gmm-ring": the
        adversarial autoencoder's ring of 10 Gaussians).
    encoder: adversarial autoencoders (``models.aae``): "gaussian" (z = mu + sigma * eps) or
        "deterministic" (z = mu).
    phases: adversarial autoencoders: "paper" (three updates per batch: reconstruction, then the
        discriminator, then the encoder as generator, each on a fresh forward pass) or "joint" (one
        forward pass; the autoencoder minimises reconstruction + generator loss in one update, then
        the discriminator is updated: pythae's schedule, about half the arithmetic).
    adversarial_weight: adversarial autoencoders with ``phases="joint"``: the weight of the generator
        loss beside the reconstruction in the autoencoder's one update (pythae's
        ``adversarial_loss_scale``). The reconstruction is a sum over every value of x (hundreds of
        nats on MNIST), the generator loss about one nat per code, so at 1 the codes are held to
        the prior weakly in many dimensions. (Under the paper's phases the generator has an Adam
        of its own, which a constant weight does not change: refused there.)
    critic_hidden: hidden widths of the second player (the AAE's discriminator on z, AVB's
        adversary T(x, z), the VAE-GAN's discriminator on x: MLP widths, or conv channels for
        --arch conv); None picks the model's default.
    adaptive_contrast: AVB (``models.avb``): contrast the implicit posterior with a Gaussian of its
        own moments (Mescheder et al. 2017, section 4) instead of with the prior.
    critic_steps: AVB: updates of the adversary T per update of the encoder and decoder (each
        further one on fresh draws of q(z|x) for the same batch), so that T's KL estimate keeps up
        with a moving encoder; 1 is the paper's alternation.
    gamma, equilibrium, margin: the VAE-GAN (``models.vaegan``): weight of the feature-space
        reconstruction against the GAN loss in the decoder's update, and the equilibrium rule:
        the discriminator is not updated while its loss on the data or the fakes is below
        ``equilibrium - margin``, nor the decoder while either is above ``equilibrium + margin``
        (both are updated when both would be skipped).
    word_dropout: sequence models (``models.sequence``): the probability that the decoder's input
        at a step (the previous step's values) is blanked while training (Bowman et al. 2016).
    inject_missing: sequence models: the share of observed values marked missing afresh in every
        training batch (Donut's missing-data injection, Xu et al. 2018): the encoder and decoder see
        them as missing and the likelihood leaves them out.
    """

    model: str = "vae"
    arch: str = "mlp"
    hidden: list[int] | None = None
    latent_dim: int = 20
    activation: str = "relu"
    likelihood: str | None = None
    prior: str = "standard-normal"
    beta: float = 1.0
    free_bits: float = 0.0
    k: int = 50
    gradient_estimator: str = "reparam"
    latent_dim2: int = 0
    hidden2: list[int] | None = None
    conditional_prior: bool = False
    alpha: float = 1.0
    given: str | None = None
    encoder: str = "gaussian"
    phases: str = "paper"
    critic_hidden: list[int] | None = None
    adversarial_weight: float = 1.0
    adaptive_contrast: bool = True
    critic_steps: int = 1
    gamma: float = 1e-2
    equilibrium: float = 0.68
    margin: float = 0.35
    word_dropout: float = 0.0
    inject_missing: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self, spec: DataSpec) -> "ModelConfig":
        """A copy with the data-dependent defaults filled in, validated against ``spec``."""
        cfg = ModelConfig(**asdict(self))
        if cfg.likelihood is None:
            cfg.likelihood = default_likelihood(spec.kind)
        if cfg.likelihood == "categorical":  # tokens: one logit per word of the vocabulary
            if not spec.vocab_size:
                raise UsageError("the categorical likelihood is for sentences (--tokens); these data have no vocabulary")
            cfg.extra = {**cfg.extra, "likelihood_args": {"categories": int(spec.vocab_size)}}
        lik = LIKELIHOODS.get(cfg.likelihood)
        if spec.kind not in lik.kinds:
            raise UsageError(
                f"likelihood {cfg.likelihood!r} does not fit {spec.kind} data; "
                f"use one of: {', '.join(n for n in LIKELIHOODS if spec.kind in LIKELIHOODS.get(n).kinds)}"
            )
        if spec.is_sequence:
            from ..modules.recurrent import CELLS, DEFAULT_HIDDEN
            if cfg.arch == "mlp":  # the default architecture, for sequences: a GRU
                cfg.arch = "gru"
            if cfg.arch not in CELLS:
                raise UsageError(f"sequences (T, D) take --arch {' | '.join(CELLS)}, not {cfg.arch!r}")
            if cfg.hidden is None:
                cfg.hidden = list(DEFAULT_HIDDEN)
        elif cfg.arch in ("gru", "lstm"):
            raise UsageError(f"--arch {cfg.arch} is for sequences; {tuple(spec.shape)} examples are not "
                             "(give a series with --window, or an .npz of sequences)")
        if not 0 <= cfg.word_dropout < 1:
            raise UsageError(f"--word-dropout must be in [0, 1), got {cfg.word_dropout}")
        if not 0 <= cfg.inject_missing < 1:
            raise UsageError(f"--inject-missing must be in [0, 1), got {cfg.inject_missing}")
        if cfg.inject_missing and not spec.is_sequence:
            raise UsageError("--inject-missing marks values of a series missing while training; the data are not sequences")
        if cfg.word_dropout and not spec.is_sequence:
            raise UsageError("--word-dropout blanks a sequence decoder's inputs; the data are not sequences")
        if cfg.hidden is None and cfg.arch == "mlp":
            cfg.hidden = [400]
        if cfg.hidden is not None and (not cfg.hidden or any(int(h) <= 0 for h in cfg.hidden)):
            raise UsageError(f"--hidden needs positive integers, got {cfg.hidden}")
        if cfg.latent_dim <= 0:
            raise UsageError(f"--latent-dim must be positive, got {cfg.latent_dim}")
        if cfg.latent_dim2 < 0:
            raise UsageError(f"--latent-dim2 must be >= 0 (0: one stochastic layer), got {cfg.latent_dim2}")
        if cfg.latent_dim2 > 0 and cfg.hidden2 is None:
            cfg.hidden2 = [max(1, int(h) // 2) for h in (cfg.hidden if cfg.arch == "mlp" and cfg.hidden else [200, 200])]
        if cfg.hidden2 is not None and (not cfg.hidden2 or any(int(h) <= 0 for h in cfg.hidden2)):
            raise UsageError(f"--hidden2 needs positive integers, got {cfg.hidden2}")
        if cfg.hidden2 is not None and cfg.latent_dim2 == 0:
            raise UsageError("--hidden2 sets the MLPs of a second stochastic layer, and --latent-dim2 is 0 "
                             "(one layer); give --latent-dim2 N or drop --hidden2 (hidden2 in a config)")
        if cfg.k < 1:
            raise UsageError(f"--k must be at least 1, got {cfg.k}")
        if cfg.gradient_estimator not in GRADIENT_ESTIMATORS:
            raise UsageError(f"--gradient-estimator must be one of {', '.join(GRADIENT_ESTIMATORS)}, "
                             f"got {cfg.gradient_estimator!r}")
        if cfg.conditional_prior and cfg.model not in CONDITIONAL_PRIOR:
            raise UsageError(f"--conditional-prior is for conditional models ({', '.join(sorted(CONDITIONAL_PRIOR))}), "
                             f"not {cfg.model!r}; drop it or use --model cvae")
        if cfg.gradient_estimator != "reparam" and cfg.model != "iwae":
            raise UsageError(f"--gradient-estimator {cfg.gradient_estimator} is for --model iwae, not {cfg.model!r}")
        if cfg.given is not None and cfg.model != "completion":
            raise UsageError(f"--given chooses the masks of --model completion, not {cfg.model!r}; drop --given")
        if cfg.model == "completion" and cfg.given is None:
            cfg.given = "random" if spec.is_image else "pixels"
        if cfg.prior not in PRIORS:
            raise UsageError(f"--prior: {PRIORS.unknown_message(cfg.prior)}")
        if cfg.encoder not in ENCODER_KINDS:
            raise UsageError(f"--encoder must be one of {', '.join(ENCODER_KINDS)}, got {cfg.encoder!r}")
        if cfg.phases not in AAE_PHASES:
            raise UsageError(f"--phases must be one of {', '.join(AAE_PHASES)}, got {cfg.phases!r}")
        if not (math.isfinite(cfg.adversarial_weight) and cfg.adversarial_weight > 0):
            raise UsageError(f"--adversarial-weight must be a positive number, got {cfg.adversarial_weight}")
        if cfg.critic_hidden is not None and (not cfg.critic_hidden or any(int(h) <= 0 for h in cfg.critic_hidden)):
            raise UsageError(f"--critic-hidden needs positive integers, got {cfg.critic_hidden}")
        if isinstance(cfg.critic_steps, bool) or not float(cfg.critic_steps).is_integer():
            raise UsageError(f"--critic-steps must be a whole number, got {cfg.critic_steps}")
        cfg.critic_steps = int(cfg.critic_steps)
        if cfg.critic_steps < 1:
            raise UsageError(f"--critic-steps must be at least 1, got {cfg.critic_steps}")
        defaults = ModelConfig()
        for key, models in MODEL_OPTIONS.items():  # an option of other models, set away from its default
            if getattr(cfg, key) != getattr(defaults, key) and cfg.model not in models:
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} is an option of --model {' / '.join(sorted(models))}, not {cfg.model!r}; drop {flag}")
        if cfg.adversarial_weight != 1.0 and cfg.phases != "joint":
            raise UsageError("--adversarial-weight weighs the generator loss against the reconstruction in the one update "
                             "of --phases joint; under the paper's phases the generator's own Adam step does not change "
                             "with a constant weight: add --phases joint or drop --adversarial-weight")
        for flag, value in (("--beta", cfg.beta), ("--free-bits", cfg.free_bits)):
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BaseModel(nn.Module):
    """What every model offers. Subclasses implement the encoder/decoder specifics.

    Contract: ``loss(x, kl_weight=1.0, **fields)`` returns a dict with "loss" (scalar to minimise)
    and "elbo", "recon", "kl" (detached batch means, nats per example); extra keys are logged.

    ``batch_fields`` names what the model reads from a batch besides x (e.g. ("y",) or ("c",)):
    the trainer, metrics and apps pass those fields of a ``data.batch.Batch`` as keyword
    arguments to ``loss``, ``elbo_terms`` and ``log_weights``. A model that wants labelled
    examples in every training batch (few labels among many examples) sets
    ``labelled_per_batch`` (a count, or below 1 a share of the batch size). The trainer keeps
    the weights with the best validation ELBO, or with the best value of the validation key a
    model names in ``selection_metric`` (higher is better, e.g. "val_accuracy"), or the last
    epoch's when it names "last".

    Several players (a critic beside the VAE): ``players()`` returns ``{name: {"params": [...],
    "lr_scale": 1.0, "betas": (0.9, 0.999)}}`` in any order, every trainable parameter in exactly
    one; the trainer gives each its own Adam and calls ``train_step(x, update=..., kl_weight=...,
    **fields)`` instead of ``loss``. The model runs the batch in its own order and calls
    ``update(name, loss)`` for each update it makes (the trainer back-propagates into that
    player's parameters only, checks them for non-finite values and steps its optimizer;
    ``update`` returns whether it did). A player declared ``"shared": True`` updates parameters
    that another player owns, with an Adam of its own (a second phase on the same weights).
    ``train_step`` returns the same dict of terms as
    ``loss``. ``extra_terms`` names further 0-dim terms (e.g. "critic_acc") averaged per epoch as
    ``train_<name>``; ``critic_accuracy`` names the one that says the critic has won when it stays
    near 1 for a whole epoch.
    """

    batch_fields: tuple[str, ...] = ()
    #: False for a model whose ``elbo_terms`` has no "kl" (no tractable q(z|x)): evaluation then
    #: reports the reconstruction and the codes' statistics, and scores examples by reconstruction.
    has_elbo: bool = True
    #: how this model's ELBO is estimated, when it is not the usual one-sample value (shown in evaluations)
    elbo_note: str | None = None
    #: why this model has no importance weights (no q(z|x) density: --iw-samples, --score nll); None: it has
    no_density: str | None = None
    labelled_per_batch: float = 0
    selection_metric: str | None = None
    extra_terms: tuple[str, ...] = ()
    critic_accuracy: str | None = None

    def players(self) -> dict[str, dict[str, Any]]:
        """The model's players and their parameters; empty for a model trained by ``loss`` alone."""
        return {}

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating-point dtype (float64 after ``.double()``)."""
        return next(self.parameters()).dtype

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation before training (a no-op unless a model defines it)."""

    def check_data(self, train: Any) -> None:
        """Refuse training data this model cannot learn from (``train``: the training Split), with
        one line naming the fix; called before anything is written (a no-op unless a model defines it)."""

    # -- the generative model alone (no encoder): for samplers such as AIS and HMC imputation ------
    # A model with a decoder and a prior overrides prior_sample, log_prior and log_likelihood; the
    # latent state z is whatever the decoder's side needs (two stochastic layers: [z1, z2]).
    @property
    def has_log_joint(self) -> bool:
        """True when the model scores log p(z) and log p(x|z) (``log_joint``)."""
        return type(self).log_likelihood is not BaseModel.log_likelihood

    def _no_log_joint(self) -> UsageError:
        return UsageError(f"model {self.config.model!r} does not score log p(z) and log p(x|z) (no decoder with a "
                          "prior over its latents), which this needs; use a run of a model that does (vae, iwae, cvae)")

    def prior_sample(self, n: int, **fields: Any) -> torch.Tensor:
        """n latent states from the prior, (n, D); ``fields`` (y or c, n rows) for conditional priors."""
        raise self._no_log_joint()

    def log_prior(self, z: torch.Tensor, **fields: Any) -> torch.Tensor:
        """log p(z) (log p(z|c) for conditional models) in nats: z (n, D) -> (n,)."""
        raise self._no_log_joint()

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, **fields: Any) -> torch.Tensor:
        """log p(x|z) (log p(x|z,c)) in nats, summed over the data dimensions: x (n, *shape), z (n, D) -> (n,)."""
        raise self._no_log_joint()

    def log_joint(self, x: torch.Tensor, z: torch.Tensor, **fields: Any) -> torch.Tensor:
        """log p(x, z) = ``log_prior`` + ``log_likelihood``, (n,) nats."""
        return self.log_prior(z, **fields) + self.log_likelihood(x, z, **fields)


def build_model(config: ModelConfig, spec: DataSpec) -> BaseModel:
    """Build the model named by ``config.model`` for data described by ``spec``."""
    cls = MODELS.get(config.model)
    cfg = config.resolved(spec)
    if cfg.latent_dim2 > 0:
        if cfg.model not in TWO_LAYER:
            raise UsageError(f"--latent-dim2 is offered by models {', '.join(sorted(TWO_LAYER))}, not {cfg.model!r}")
        cls = TWO_LAYER[cfg.model]
    if spec.is_sequence:
        from .sequence import SEQUENCE
        if cfg.model not in SEQUENCE:
            raise UsageError(f"--model {cfg.model} does not take sequences; use {' or '.join(sorted(SEQUENCE))}")
        cls = SEQUENCE[cfg.model]
    if cfg.extra.get("features"):
        if cfg.model not in ON_FEATURES:
            raise UsageError(f"--features is offered by models {', '.join(sorted(ON_FEATURES))}, not {cfg.model!r}")
        cls = ON_FEATURES[cfg.model]
    return cls(cfg, spec)
